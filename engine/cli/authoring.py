"""The authoring commands: ``diff``, ``coverage`` and ``playground``.

Thin, like the rest of the CLI: parse options, call ``moerules.engine.authoring``, render.
``register`` adds them to the ``moerules`` group.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import orjson
from moerules.engine.errors import RuleError, SetupError

__all__ = ["register"]

EXIT_RULES, EXIT_CHANGED = 1, 1


def _fail_rules(exc: RuleError) -> None:
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    count = len(exc.problems)
    click.echo(f"{count} problem{'s' if count != 1 else ''} found", err=True)
    sys.exit(EXIT_RULES)


@contextmanager
def _bundle(
    ref: str, sets: tuple[str, ...], stack: ExitStack, *, trace: bool = False
) -> Iterator[Any]:
    """A compiled bundle from a path, a shipped name or ``PATH@REV``."""
    from moerules.engine.api import load_bundle
    from moerules.engine.authoring.revisions import bundle_at_revision, split_revision

    path, rev = split_revision(ref)
    if rev is None:
        yield load_bundle(ref, sets, trace=trace)
        return
    with bundle_at_revision(path, rev) as copy:
        yield load_bundle(copy, sets, trace=trace)


def _check_input(input_: str) -> None:
    """One line, exit 2, when ``input_`` cannot be an input (as ``run`` says it)."""
    from moerules.engine.runtime.input import check_input

    try:
        check_input(input_)
    except SetupError as exc:
        click.echo(f"moerules: error: {exc}", err=True)
        sys.exit(2)


def _event_bundle(compiled: Any, command: str) -> None:
    """One line, exit 2, for a cohort bundle: what it sends depends on its membership state,
    not on each record alone, so a record-by-record diff or coverage would mislead."""
    from moerules.engine.cohorts import CohortSource

    if isinstance(compiled.source, CohortSource):
        click.echo(
            f"moerules: error: {command} works record by record on event bundles; "
            f"{compiled.model.bundle} is a cohort bundle, whose requests depend on its "
            "membership state: use `moerules run --dry-run` and `moerules explain`",
            err=True,
        )
        sys.exit(2)


@click.command()
@click.argument("old")
@click.argument("new")
@click.option(
    "--input",
    "input_",
    required=True,
    help="sample: JSON Lines in the bundles' source format, or - for stdin",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a key in both bundles (repeatable)",
)
@click.option("--json", "as_json", is_flag=True, help="print the whole diff as JSON")
@click.option(
    "--examples",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="items shown per kind of change (text output)",
)
@click.option("--fail-on-change", is_flag=True, help="exit 1 when anything changes (for CI)")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="processes comparing parts of a large sample (default: one per CPU)",
)
def diff(
    old: str,
    new: str,
    input_: str,
    sets: tuple[str, ...],
    as_json: bool,
    examples: int,
    fail_on_change: bool,
    jobs: int | None,
) -> None:
    """Compare what OLD and NEW bundles do to a sample, record by record.

    OLD and NEW are bundle files, overlays, shipped names, or PATH@REV for a file at a git
    revision (rules/x/bundle.yaml@HEAD~1).
    """
    from moerules.engine.api import iter_lines
    from moerules.engine.authoring.diff import diff_bundles, diff_file
    from moerules.engine.runtime.input import is_regular

    _check_input(input_)
    with ExitStack() as stack:
        try:
            a = stack.enter_context(_bundle(old, sets, stack))
            b = stack.enter_context(_bundle(new, sets, stack))
        except RuleError as exc:
            _fail_rules(exc)
        _event_bundle(a, "moerules diff")
        _event_bundle(b, "moerules diff")
        if input_ == "-" or not is_regular(input_):  # a pipe or a device: read it once
            result = diff_bundles(a, b, iter_lines(input_), old_label=old, new_label=new)
        else:
            result = diff_file(
                a, b, input_, jobs=jobs or os.cpu_count() or 1, old_label=old, new_label=new
            )
    from moerules.engine.secrets import scrubber

    scrub = scrubber(a.secrets | b.secrets)  # records may carry a key: never shown
    if as_json:
        click.echo(
            scrub(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2, default=str).decode())
        )
    else:
        click.echo(scrub(result.render(examples)))
    click.echo(f"compared {result.records:,} records in {result.elapsed_seconds:.1f} s", err=True)
    if result.changed and fail_on_change:
        sys.exit(EXIT_CHANGED)


@click.command()
@click.argument("bundle")
@click.option(
    "--input",
    "input_",
    required=True,
    help="sample: JSON Lines in the bundle's source format, or - for stdin",
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a bundle key (repeatable)"
)
@click.option("--json", "as_json", is_flag=True, help="print the coverage as JSON")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="unmapped paths and unused table rows shown (text output)",
)
def coverage(bundle: str, input_: str, sets: tuple[str, ...], as_json: bool, limit: int) -> None:
    """Show what a sample exercises of BUNDLE: rules, table rows, attributes, identities,
    project names, and the input fields no rule reads."""
    from moerules.engine.api import iter_lines
    from moerules.engine.authoring.coverage import measure

    _check_input(input_)
    with ExitStack() as stack:
        try:
            compiled = stack.enter_context(_bundle(bundle, sets, stack))
        except RuleError as exc:
            _fail_rules(exc)
        _event_bundle(compiled, "moerules coverage")
        result = measure(compiled, iter_lines(input_))
    if as_json:
        click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(result.render(limit))
    click.echo(f"measured {result.records:,} records in {result.elapsed_seconds:.1f} s", err=True)


@click.command()
@click.argument("bundle", required=False)
@click.option("--input", "input_", help="sample: JSON Lines whose records the page offers")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (loopback only, unless you mean it)",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
def playground(bundle: str | None, input_: str | None, host: str, port: int) -> None:
    """Edit BUNDLE in a local web page and see, live, what it does to a record.

    BUNDLE is a bundle file or overlay (default: ./bundle.yaml). The page shows the requests
    and the explain trace as you type, errors and warnings at their line, runs the bundle's
    YAML tests, diffs the edit against the file over the sample, and saves it back.
    """
    from moerules.engine.api import iter_lines, resolve_bundle
    from moerules.engine.authoring.playground import DIFF_RECORDS, Playground, serve

    if bundle is None:
        if not Path("bundle.yaml").is_file():
            raise click.UsageError("give a BUNDLE file (there is no bundle.yaml here)")
        bundle = "bundle.yaml"
    try:
        path = resolve_bundle(bundle)
    except RuleError as exc:
        _fail_rules(exc)
    sample: list[tuple[int, bytes]] = []
    if input_ is not None:
        _check_input(input_)
        for number, line in iter_lines(input_):
            if isinstance(line, bytes):  # a line too long to read is no sample
                sample.append((number, line))
            if len(sample) >= DIFF_RECORDS:
                break
    state = Playground(path, sample)
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback:
        state.hosts = state.hosts | {host}
        click.echo(
            f"warning: listening on {host}: anyone who can reach it and has the page's "
            "token can edit and save this bundle",
            err=True,
        )

    def ready(url: str) -> None:
        click.echo(f"moerules playground for {path}: open {url} (Ctrl+C stops it)", err=True)

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on Ctrl+C, then re-raises it
        serve(state, host, port, ready)
    click.echo("playground stopped", err=True)


def register(group: click.Group) -> None:
    """Add the authoring commands to the ``moerules`` command group."""
    group.add_command(diff)
    group.add_command(coverage)
    group.add_command(playground)
