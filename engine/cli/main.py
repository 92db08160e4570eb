"""The ``moerules`` command line. Commands parse options, call the engine, render results.

Exit codes: 0 success (a run that finished, dead letters included: they are counted, written
and reported, not lost); 1 invalid rules or failed tests; 2 usage error (a bad option, or a
path that cannot be used: one line ``moerules: error: ...`` naming it and what to do); 3 the
run finished with dead letters and ``--fail-on-dead-letter`` was given; 4 the run was
interrupted or could not deliver.

Everything a command prints or writes passes through the run's one scrubber
(:mod:`moerules.engine.secrets`), so no form of a secret reaches a terminal or a file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import orjson
from moerules.engine.errors import MoerulesError, RuleError, SetupError

EXIT_RULES, EXIT_USAGE, EXIT_DEAD_LETTERS, EXIT_INTERRUPTED = 1, 2, 3, 4

Scrub = Callable[[str], str]


def _plain(text: str) -> str:
    return text


def _fail_rules(exc: RuleError) -> NoReturn:
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    count = len(exc.problems)
    click.echo(f"{count} problem{'s' if count != 1 else ''} found", err=True)
    sys.exit(EXIT_RULES)


def _fail(message: str, scrub: Scrub = _plain) -> NoReturn:
    """A usage error as one line on stderr (no usage text: the message says what to do)."""
    click.echo(f"moerules: error: {scrub(message)}", err=True)
    sys.exit(EXIT_USAGE)


def _check_writable(path: Path, what: str, *, make_dirs: bool = False) -> None:
    """SetupError unless a file can be written at ``path``; ``make_dirs``: its missing
    directories would be created (so the nearest existing one must be writable)."""
    if path.is_dir():
        raise SetupError(f"cannot write {what} {path}: it is a directory; give a file path")
    parent = path.parent
    if not parent.is_dir():
        if not make_dirs or parent.exists():
            problem = "is not a directory" if parent.exists() else "does not exist"
            raise SetupError(
                f"cannot write {what} {path}: {parent} {problem}; create the "
                "directory or choose another path"
            )
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise SetupError(
                f"cannot write {what} {path}: {parent} is not a directory; choose another path"
            )
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK) or (target is parent and not os.access(parent, os.X_OK)):
        raise SetupError(
            f"cannot write {what} {path}: permission denied on {target}; "
            "choose a path you can write"
        )


_SIZE_UNITS = {
    "": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def _byte_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A size in bytes: ``1048576``, ``512KiB``, ``16MiB``, ``1GiB`` (K, M, G: powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or int(match.group(1)) < 1:
        raise click.BadParameter(
            f"{value!r} is not a size: give bytes, or a number with KiB, MiB or GiB (e.g. 16MiB)"
        )
    return int(match.group(1)) * unit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moerules")
def main() -> None:
    """Declarative YAML rules that move data between MoEngage and its partners."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--strict",
    is_flag=True,
    help="warnings (e.g. a path the source's records never contain) fail validation too",
)
def validate(paths: tuple[str, ...], strict: bool) -> None:
    """Check bundle and test files (files, directories or shipped bundle names)."""
    from moerules.engine.api import validate_paths

    checked, problems = validate_paths(paths, warnings=True)
    for problem in problems:
        click.echo(str(problem), err=True)
    failing = [p for p in problems if strict or p.severity == "error"]
    if failing:
        click.echo(
            f"{len(failing)} problem{'s' if len(failing) != 1 else ''} found in {checked} files",
            err=True,
        )
        sys.exit(EXIT_RULES)
    if checked == 0:
        click.echo("no bundle or test files found", err=True)
        sys.exit(EXIT_RULES)
    warned = len(problems)
    click.echo(
        f"ok: {checked} files valid"
        + (
            f" ({warned} warning{'s' if warned != 1 else ''}; --strict fails on them)"
            if warned
            else ""
        )
    )


def _delivery_options(command: Any) -> Any:
    """Options of commands that send (run, replay); they map onto DeliveryOptions."""
    for option in reversed(
        [
            click.option(
                "--concurrency",
                default=8,
                show_default=True,
                type=click.IntRange(min=1),
                help="requests in flight at once",
            ),
            click.option(
                "--max-attempts",
                default=6,
                show_default=True,
                type=click.IntRange(min=1),
                help="tries per request (429, 5xx, timeouts)",
            ),
            click.option(
                "--backoff-base",
                default=0.5,
                show_default=True,
                type=click.FloatRange(min=0),
                help="seconds; backoff doubles from here",
            ),
            click.option(
                "--backoff-cap",
                default=30.0,
                show_default=True,
                type=click.FloatRange(min=0),
                help="longest backoff, in seconds",
            ),
            click.option(
                "--drain-timeout",
                default=30.0,
                show_default=True,
                type=click.FloatRange(min=0),
                help="on SIGINT/SIGTERM, seconds to finish what was read",
            ),
        ]
    ):
        command = option(command)
    return command


@main.command()
@click.argument("bundle")
@click.option(
    "--input",
    "input_",
    required=True,
    help="JSON Lines file (or a pipe, or /dev/null), or - for stdin",
)
@click.option("--dry-run", is_flag=True, help="send nothing; write the requests instead")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="dry run: write requests here instead of stdout",
)
@click.option("--report", type=click.Path(path_type=Path), help="write the run report as JSON")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a bundle key, e.g. destination.data_center=02 (repeatable)",
)
@click.option(
    "--dead-letter",
    type=click.Path(path_type=Path),
    help="dead-letter file (default: <state-dir>/dead-letter.jsonl; with --dry-run "
    "moerules-dead-letter.jsonl)",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="where checkpoints live (default: .moerules)",
)
@click.option("--from-start", is_flag=True, help="ignore the checkpoint; read from line 1")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@click.option(
    "--fail-on-dead-letter",
    is_flag=True,
    help="exit 3 when any record was dead-lettered (for CI and cron)",
)
@click.option(
    "--max-line-bytes",
    default="16MiB",
    show_default=True,
    callback=_byte_size,
    help="a longer input line is dead-lettered as 'line too long' (e.g. 64MiB)",
)
@_delivery_options
def run(
    bundle: str,
    input_: str,
    dry_run: bool,
    output: Path | None,
    report: Path | None,
    sets: tuple[str, ...],
    dead_letter: Path | None,
    state_dir: Path | None,
    from_start: bool,
    quiet: bool,
    fail_on_dead_letter: bool,
    max_line_bytes: int,
    **delivery: Any,
) -> None:
    """Run BUNDLE (a path or a shipped bundle's name) over JSON Lines input."""
    from moerules.engine.api import dry_run as do_dry_run
    from moerules.engine.api import iter_lines, load_bundle
    from moerules.engine.runtime.input import check_input
    from moerules.engine.secrets import scrubber

    try:
        compiled = load_bundle(bundle, sets)
    except RuleError as exc:
        _fail_rules(exc)
    scrub = scrubber(compiled.secrets)
    try:
        check_input(input_)
        if report is not None:
            _check_writable(report, "the report to")
        if dry_run:
            dead_path = dead_letter or Path("moerules-dead-letter.jsonl")
            _check_writable(dead_path, "dead letters to")
            if output is not None:
                _check_writable(output, "the requests to")
            out: IO[bytes]
            with _open_output(output) if output else _stdout() as out:
                result = do_dry_run(
                    compiled,
                    iter_lines(input_, max_line_bytes=max_line_bytes),
                    out,
                    dead_letter=dead_path,
                )
        else:
            if compiled.missing_env:
                _fail(
                    "a real run needs these environment variables set: "
                    + ", ".join(compiled.missing_env)
                    + " (or use --dry-run)"
                )
            from moerules.engine.runtime.delivery import (
                DEFAULT_STATE_DIR,
                DeliveryOptions,
                deliver,
            )
            from moerules.engine.runtime.state import check_state_dir

            check_state_dir(state_dir or DEFAULT_STATE_DIR)
            explicit = dead_letter is not None
            dead_path = dead_letter or (state_dir or DEFAULT_STATE_DIR) / "dead-letter.jsonl"
            _check_writable(dead_path, "dead letters to", make_dirs=not explicit)
            result = deliver(
                compiled,
                input_,
                dead_letter=dead_path,
                state_dir=state_dir,
                from_start=from_start,
                quiet=quiet,
                options=DeliveryOptions(max_line_bytes=max_line_bytes, **delivery),
            )
    except SetupError as exc:
        _fail(str(exc), scrub)
    _finish(result, report, dead_path, fail_on_dead_letter, scrub)


def _open_output(path: Path) -> IO[bytes]:
    try:
        return path.open("wb")
    except OSError as exc:
        raise SetupError(
            f"cannot write the requests to {path}: {exc.strerror or exc}; choose another --output"
        ) from None


def _stdout() -> Any:
    class _Keep:
        def __enter__(self) -> IO[bytes]:
            return sys.stdout.buffer

        def __exit__(self, *exc: object) -> None:
            sys.stdout.buffer.flush()

    return _Keep()


def _finish(
    result: Any,
    report_path: Path | None,
    dead_path: Path | None,
    fail_on_dead_letter: bool = False,
    scrub: Scrub = _plain,
) -> None:
    click.echo(scrub(result.summary()), err=True)
    dead = sum(result.dead_lettered.values())
    if dead and dead_path is not None:
        click.echo(f"  dead letters written to {dead_path}", err=True)
    if report_path is not None:
        data = scrub(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
        try:
            report_path.write_text(data, encoding="utf-8")
        except OSError as exc:
            _fail(
                f"cannot write the report to {report_path}: {exc.strerror or exc}; the "
                "summary above is complete, choose another --report next time"
            )
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if dead and fail_on_dead_letter:
        sys.exit(EXIT_DEAD_LETTERS)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bundle", help="bundle to send with (default: the one the dead letters name)")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a bundle key, e.g. destination.endpoint=... (repeatable)",
)
@click.option("--report", type=click.Path(path_type=Path), help="write the replay report as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@click.option("--fail-on-dead-letter", is_flag=True, help="exit 3 when any record failed again")
@_delivery_options
def replay(
    file: Path,
    bundle: str | None,
    sets: tuple[str, ...],
    report: Path | None,
    quiet: bool,
    fail_on_dead_letter: bool,
    **delivery: Any,
) -> None:
    """Send the delivery failures in a dead-letter FILE again, after a fix.

    FILE is rewritten: what was delivered leaves it, what failed again is updated.
    """
    from moerules.engine.api import load_bundle
    from moerules.engine.runtime.deadletter import DeadLetterFormatError
    from moerules.engine.runtime.delivery import DeliveryOptions
    from moerules.engine.runtime.replay import bundles_named, read_dead_letters, replay_file

    try:
        letters = read_dead_letters(file)
    except DeadLetterFormatError as exc:
        raise click.UsageError(str(exc)) from None
    if bundle is None:
        names = bundles_named(letters)
        if len(names) != 1:
            raise click.UsageError(
                "pass --bundle: "
                + (
                    f"{file} holds dead letters of {', '.join(sorted(names))}"
                    if names
                    else f"{file} holds no delivery failures"
                )
            )
        bundle = names.pop()
    try:
        compiled = load_bundle(bundle, sets)
    except RuleError as exc:
        _fail_rules(exc)
    if compiled.missing_env:
        raise click.UsageError(
            "replay needs these environment variables set: " + ", ".join(compiled.missing_env)
        )
    from moerules.engine.secrets import scrubber

    scrub = scrubber(compiled.secrets)
    try:
        if report is not None:
            _check_writable(report, "the report to")
        result = replay_file(compiled, file, options=DeliveryOptions(**delivery), quiet=quiet)
    except SetupError as exc:
        _fail(str(exc), scrub)
    _finish(result, report, file, fail_on_dead_letter, scrub)


@main.command()
@click.argument("bundle")
@click.option(
    "--event",
    "event_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a JSON file with one input record, or a JSON Lines file (see --line)",
)
@click.option(
    "--line",
    "line_no",
    type=click.IntRange(min=1),
    help="which line of a JSON Lines file to explain, numbered as the run and its "
    "dead letters number them (default: the first record)",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="print the trace as JSON")
def explain(
    bundle: str, event_file: Path, line_no: int | None, sets: tuple[str, ...], as_json: bool
) -> None:
    """Trace one input record through BUNDLE: rules, identity, fields, routing, request."""
    from moerules.engine.api import load_bundle
    from moerules.engine.authoring.explain import explain_record, pick_record
    from moerules.engine.secrets import scrubber

    try:
        traced = load_bundle(bundle, sets, trace=True)
    except RuleError as exc:
        _fail_rules(exc)
    scrub = scrubber(traced.secrets)
    try:
        picked = pick_record(event_file, line_no)
        result = explain_record(traced, picked.record)  # a cohort flow reads its state
    except SetupError as exc:
        _fail(str(exc), scrub)
    note = f" ({picked.note})" if picked.note else ""
    if as_json:  # stdout stays JSON; which line it is goes to stderr
        click.echo(scrub(result.to_json().decode()))
        if picked.where:
            click.echo(f"moerules: explained {event_file}{picked.where}{note}", err=True)
    else:
        click.echo(f"explain {traced.model.bundle} <- {event_file}{picked.where}{note}")
        click.echo(scrub(result.render()))


@main.command("compile")
@click.argument("bundle")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@click.option("--trace", is_flag=True, help="the traced code `explain` runs")
def compile_cmd(bundle: str, sets: tuple[str, ...], trace: bool) -> None:
    """Print the Python code BUNDLE compiles to: what runs for every record."""
    from moerules.engine.api import load_bundle
    from moerules.engine.compile.listing import listing

    try:
        compiled = load_bundle(bundle, sets, trace=trace)
    except RuleError as exc:
        _fail_rules(exc)
    click.echo(listing(compiled), nl=False)


@main.command("test")
@click.argument("paths", nargs=-1, required=True)
def test_cmd(paths: tuple[str, ...]) -> None:
    """Run the YAML test cases under PATHS (files, directories or shipped bundle names)."""
    from moerules.engine.api import collect_rule_files
    from moerules.engine.authoring.testing import run_test_file

    _, tests, problems = collect_rule_files(paths)
    passed = failed = 0
    for problem in problems:
        click.echo(str(problem), err=True)
    for path in tests:
        try:
            results = run_test_file(path)
        except RuleError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            failed += 1
            continue
        for result in results:
            if result.passed:
                passed += 1
                continue
            failed += 1
            click.echo(f"FAIL {result.position}: {result.name}")
            for failure in result.failures:
                click.echo("  " + failure.replace("\n", "\n  "))
    click.echo(f"{passed} passed, {failed} failed")
    if failed or problems or not (passed or failed):
        sys.exit(EXIT_RULES)


@main.command()
def schema() -> None:
    """Print the JSON Schema of bundle files (for yaml-language-server / VS Code)."""
    from moerules.engine.rules.schema import bundle_schema

    click.echo(orjson.dumps(bundle_schema(), option=orjson.OPT_INDENT_2).decode())


@main.command()
def bundles() -> None:
    """List the shipped bundles."""
    from moerules.engine.api import load_document
    from moerules.engine.rules.overlay import shipped_bundles

    for name, path in shipped_bundles().items():
        try:
            description = str(load_document(path).get("description", ""))
        except MoerulesError:
            description = "(does not load: run `moerules validate`)"
        click.echo(f"{name:<32} {description}")


@main.command()
@click.argument("name")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="NAME=VALUE",
    help="an emulator setting, VALUE as JSON or text (e.g. -o data_center=02, "
    "-o 'limits={\"minute\": 1}'); see README, Emulators",
)
def emulate(name: str, host: str, port: int, options: tuple[str, ...]) -> None:
    """Serve a local emulator of a partner API (moengage, amplitude, segment, mixpanel, and
    any other registered in the ``moerules.emulators`` entry-point group)."""
    from moerules.connectors.emulation.server import build, parse_options, run_forever
    from moerules.engine.connector import emulator_names

    names = emulator_names()
    if name not in names:
        raise click.UsageError(f"unknown emulator {name!r}; choose from {', '.join(names)}")
    try:
        emulator = build(name, **parse_options(options))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run_forever(emulator, host, port)


@main.command()
@click.option("--quick", is_flag=True, help="every size / 10, for a smoke run")
@click.option("--seed", default=42, show_default=True, type=int, help="data generator seed")
def bench(quick: bool, seed: int) -> None:
    """Run the benchmark suite (`python -m moerules.benchmarks`): speed against hand-written."""
    try:
        from moerules.benchmarks.__main__ import main as run_benchmarks
    except ImportError:  # a source checkout installed before benchmarks/ existed
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from moerules.benchmarks.__main__ import main as run_benchmarks
    sys.exit(run_benchmarks([*(["--quick"] if quick else []), "--seed", str(seed)]))


from moerules.engine.cli.authoring import register as _register_authoring  # noqa: E402

_register_authoring(main)  # diff, coverage, playground (engine/cli/authoring.py)
main.add_command(__import__("moerules.engine.cli.serve", fromlist=["serve"]).serve)  # one line
main.add_command(__import__("moerules.engine.cli.worker", fromlist=["worker"]).worker)

from moerules.engine.cli.cohorts import register as _register_cohorts  # noqa: E402

_register_cohorts(main)  # cohorts (engine/cli/cohorts.py)

if __name__ == "__main__":  # pragma: no cover
    main()
