"""`moerules run` at the edges: paths that cannot be used, odd inputs, huge lines, reruns.

Every refusal is one line, ``moerules: error: ...``, naming the thing and what to do, with
exit 2 (README: usage error); nothing is read or sent before it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.conftest import EXAMPLES, Result

SECRET = "edges-data-api-key-value"
ENV = {"MOENGAGE_WORKSPACE_ID": "WS_EDGES", "MOENGAGE_DATA_API_KEY": SECRET}
BUNDLE = "mparticle-to-moengage"


def batch(cid: str, name: str = "Tested", **extra: object) -> bytes:
    return (
        orjson.dumps(
            {
                "environment": "production",
                "mpid": 7,
                "user_identities": {"customer_id": cid},
                "events": [
                    {
                        "event_type": "custom_event",
                        "data": {"event_name": name, "timestamp_unixtime_ms": 1700000000000},
                    }
                ],
                **extra,
            }
        )
        + b"\n"
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(batch("c1") + batch("c2"))
    return path


def usage_error(result: Result, message: str) -> None:
    """Exit 2 and exactly one line on stderr; nothing on stdout."""
    assert (result.exit_code, result.stderr, result.stdout) == (
        2,
        f"moerules: error: {message}\n",
        "",
    )


# -- places to write ---------------------------------------------------------------------------
def test_output_in_a_missing_directory(
    cli: Callable[..., Result], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nowhere" / "requests.jsonl"
    result = cli("run", BUNDLE, "--input", str(data), "--dry-run", "--output", str(out))
    usage_error(
        result,
        f"cannot write the requests to {out}: {out.parent} does not exist; "
        "create the directory or choose another path",
    )


def test_output_that_is_a_directory(cli: Callable[..., Result], data: Path, tmp_path: Path) -> None:
    result = cli("run", BUNDLE, "--input", str(data), "--dry-run", "--output", str(tmp_path))
    usage_error(
        result, f"cannot write the requests to {tmp_path}: it is a directory; give a file path"
    )


def test_output_under_a_file(cli: Callable[..., Result], data: Path) -> None:
    out = data / "requests.jsonl"
    result = cli("run", BUNDLE, "--input", str(data), "--dry-run", "--output", str(out))
    usage_error(
        result,
        f"cannot write the requests to {out}: {data} is not a directory; "
        "create the directory or choose another path",
    )


def test_unwritable_output(cli: Callable[..., Result], data: Path) -> None:
    # /proc refuses new files even to root, which tests here may run as
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(data),
        "--dry-run",
        "--output",
        "/proc/moerules-requests.jsonl",
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "moerules: error: cannot write the requests to /proc/moerules-requests.jsonl: "
    )
    assert result.stderr.count("\n") == 1 and "choose" in result.stderr


def test_dead_letter_in_a_missing_directory(
    cli: Callable[..., Result], data: Path, tmp_path: Path
) -> None:
    dead = tmp_path / "missing" / "dead.jsonl"
    for mode in (["--dry-run"], []):  # checked before a real run sends anything
        result = cli(
            "run",
            BUNDLE,
            "--input",
            str(data),
            *mode,
            "--dead-letter",
            str(dead),
            "--state-dir",
            str(tmp_path / "state"),
            env=ENV,
        )
        usage_error(
            result,
            f"cannot write dead letters to {dead}: {dead.parent} does not "
            "exist; create the directory or choose another path",
        )


def test_report_in_a_missing_directory(
    cli: Callable[..., Result], data: Path, tmp_path: Path
) -> None:
    report = tmp_path / "missing" / "report.json"
    result = cli("run", BUNDLE, "--input", str(data), "--dry-run", "--report", str(report))
    usage_error(
        result,
        f"cannot write the report to {report}: {report.parent} does not "
        "exist; create the directory or choose another path",
    )


def test_state_dir_that_is_a_file(cli: Callable[..., Result], data: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    result = cli("run", BUNDLE, "--input", str(data), "--state-dir", str(state), env=ENV)
    usage_error(
        result,
        f"the state directory {state} is a file; pass --state-dir a directory "
        "(it is created if missing)",
    )


def test_state_dir_that_cannot_be_created(
    cli: Callable[..., Result], data: Path, tmp_path: Path
) -> None:
    state = data / "state"  # under a file
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(data),
        "--state-dir",
        str(state),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        env=ENV,
    )
    usage_error(
        result,
        f"cannot create the state directory {state}: Not a directory; pass "
        "--state-dir a directory moerules can write",
    )


def test_corrupt_state_file(cli: Callable[..., Result], data: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.sqlite").write_bytes(b"this is not sqlite" * 100)
    result = cli("run", BUNDLE, "--input", str(data), "--state-dir", str(state), env=ENV)
    usage_error(
        result,
        f"{state / 'state.sqlite'} is corrupt or not a moerules state file "
        "(file is not a database); move it away to start over (every input is "
        "then read from line 1), or pass another --state-dir",
    )


def test_state_file_of_another_format(
    cli: Callable[..., Result], data: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    result = cli("run", BUNDLE, "--input", str(data), "--state-dir", str(state), env=ENV)
    usage_error(
        result,
        f"{path} was written by a newer moerules (state format 99; this one "
        "reads 1): run that version, or pass another --state-dir",
    )
    path.unlink()
    db = sqlite3.connect(path)  # the format before versions: runs without a prefix hash
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, bundle TEXT, input TEXT)")
    db.commit()
    db.close()
    result = cli("run", BUNDLE, "--input", str(data), "--state-dir", str(state), env=ENV)
    usage_error(
        result,
        f"{path} holds checkpoints in an older format (0; this moerules reads "
        "1): finish those runs with the moerules that started them, or move "
        "the file away to start over",
    )


# -- inputs ------------------------------------------------------------------------------------
def test_input_that_is_a_directory(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("run", BUNDLE, "--input", str(tmp_path), "--dry-run")
    usage_error(
        result, f"input {tmp_path} is a directory; --input takes a JSON Lines file, or - for stdin"
    )


def test_unreadable_input(cli: Callable[..., Result]) -> None:
    result = cli("run", BUNDLE, "--input", "/proc/self/mem", "--dry-run")
    usage_error(result, "cannot read input /proc/self/mem: Input/output error")


def test_dev_null_is_an_empty_input(cli: Callable[..., Result], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = cli(
        "run",
        BUNDLE,
        "--input",
        "/dev/null",
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
    )
    assert result.exit_code == 0, result.stderr
    assert "read      0 lines" in result.stderr
    assert orjson.loads(report.read_bytes())["items_in"] == 0


def test_a_named_pipe_is_an_input(cli: Callable[..., Result], tmp_path: Path) -> None:
    fifo = tmp_path / "batches.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("wb") as f:
            f.write(batch("c1") + batch("c2") + batch("c3"))

    thread = threading.Thread(target=writer)
    thread.start()
    report = tmp_path / "report.json"
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(fifo),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        env=ENV,
    )
    thread.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(report.read_bytes())
    assert (data["lines_in"], data["delivered_events"]) == (3, 3)


def test_bom_on_line_one_is_accepted(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + batch("c1") + batch("c2"))
    report = tmp_path / "report.json"
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(path),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(report.read_bytes())
    assert (data["delivered_events"], data["dead_lettered_total"]) == (2, 0)
    (request,) = [orjson.loads(x) for x in result.stdout.splitlines()]
    customers = [e["customer_id"] for e in request["body"]["elements"] if e["type"] == "event"]
    assert customers == ["c1", "c2"]


def test_line_too_long_is_dead_lettered(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    huge = batch("c2", "Huge", pad="x" * 5000)
    path.write_bytes(batch("c1") + huge + batch("c3"))
    report, dead = tmp_path / "report.json", tmp_path / "dead.jsonl"
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(path),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(dead),
        "--max-line-bytes",
        "4KiB",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(report.read_bytes())
    assert data["dead_lettered"] == {"line too long": 1}
    assert (data["lines_in"], data["delivered_events"], data["balanced"]) == (3, 2, True)
    (letter,) = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert letter == {
        "reason": "line too long",
        "line": 2,
        "bundle": BUNDLE,
        "rule": None,
        "error": f"the line is {len(huge) - 1} bytes long; the limit is 4096 bytes "
        "(--max-line-bytes)",
        "raw": huge[:1024].decode(),
        "line_bytes": len(huge) - 1,
    }


def test_max_line_bytes_must_be_a_size(cli: Callable[..., Result], data: Path) -> None:
    result = cli("run", BUNDLE, "--input", str(data), "--dry-run", "--max-line-bytes", "lots")
    assert result.exit_code == 2
    assert (
        "Invalid value for '--max-line-bytes': 'lots' is not a size: give bytes, or a "
        "number with KiB, MiB or GiB (e.g. 16MiB)"
    ) in result.stderr


_PEAK = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE)
block = b"x" * (1 << 20)
try:
    for _ in range(int(os.environ["MIB"])):  # one line, no newline, through a pipe
        proc.stdin.write(block)
    proc.stdin.close()
except BrokenPipeError:
    pass
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss // 1024)
sys.stderr.buffer.write(err)
"""


def peak_rss_mib(args: list[str], mib: int) -> tuple[int, int, str]:
    """(exit code, peak RSS in MiB, stderr) of the console script fed ``mib`` MiB, no newline."""
    script = str(Path(sys.executable).parent / "moerules")
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MIB": str(mib)},
        timeout=120,
        check=False,
    )
    code, peak = done.stdout.split()
    return int(code), int(peak), done.stderr


def test_memory_stays_flat_on_a_line_without_end(tmp_path: Path) -> None:
    args = [
        "run",
        BUNDLE,
        "--input",
        "-",
        "--dry-run",
        "--report",
        str(tmp_path / "r.json"),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
    ]
    code, small, _ = peak_rss_mib(args, 1)
    assert code == 0
    code, huge, stderr = peak_rss_mib(args, 256)  # 256 MiB in one line, default limit 16 MiB
    assert code == 0, stderr
    assert "Traceback" not in stderr
    # a whole line would be 256 MiB at least; the limit and a read block are all it may hold
    assert huge - small < 48, (small, huge)
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["dead_lettered"] == {"line too long": 1}
    (letter,) = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert letter["line_bytes"] == 256 << 20 and len(letter["raw"]) == 1024


# -- reruns and dead letters -------------------------------------------------------------------
def test_dry_run_dead_letters_replace_the_last_run(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    dead, report = tmp_path / "dead.jsonl", tmp_path / "report.json"
    args = (
        "run",
        str(EXAMPLES / "acme-overlay.yaml"),
        "--input",
        str(EXAMPLES / "mparticle-batches.jsonl"),
        "--dry-run",
        "--dead-letter",
        str(dead),
        "--report",
        str(report),
    )
    first = cli(*args, env=ENV)
    letters = dead.read_bytes()
    second = cli(*args, env=ENV)
    assert first.exit_code == second.exit_code == 0
    assert dead.read_bytes() == letters  # not appended to
    counted = orjson.loads(report.read_bytes())["dead_lettered_total"]
    assert len(letters.splitlines()) == counted == 4
    # a rerun without dead letters leaves none from before
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(batch("c1"))
    assert (
        cli(
            "run", BUNDLE, "--input", str(clean), "--dry-run", "--dead-letter", str(dead), env=ENV
        ).exit_code
        == 0
    )
    assert dead.read_bytes() == b""


def test_template_failure_names_its_rule(
    cli: Callable[..., Result], tmp_path: Path, write: Callable[[str, str], Path]
) -> None:
    bundle = write(
        "bundle.yaml",
        """
        bundle: t
        source: {connector: mparticle}
        destination:
          connector: moengage
          settings: {workspace_id: WS, data_api_key: "${TEST_KEY}"}
        identity:
          candidates: {customer_id: batch.user_identities.customer_id}
        events:
          - name: ratio-event
            when: event.event_type == 'custom_event'
            event_name: "ratio {{ 100 // event.data.count }}"
        """,
    )
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        orjson.dumps(
            {
                "user_identities": {"customer_id": "c1"},
                "events": [{"event_type": "custom_event", "data": {"count": 0}}],
            }
        )
        + b"\n"
    )
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        str(bundle),
        "--input",
        str(path),
        "--dry-run",
        "--dead-letter",
        str(dead),
        env={"TEST_KEY": "template-test-key"},
    )
    assert result.exit_code == 0, result.stderr
    (letter,) = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert (letter["reason"], letter["rule"], letter["error"]) == (
        "template failed",
        "ratio-event",
        "ZeroDivisionError: integer division or modulo by zero",
    )


# -- secrets on the way out --------------------------------------------------------------------
def test_set_errors_never_show_a_secret(cli: Callable[..., Result], data: Path) -> None:
    key = "set-on-the-command-line-key"
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(data),
        "--dry-run",
        "--set",
        f"destination.data_api_key=[{key}",
        env=ENV,
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("--set destination.data_api_key:1:29: error: invalid YAML")
    # a secret from the environment, echoed by a setting that normalises it
    result = cli(
        "run",
        BUNDLE,
        "--input",
        str(data),
        "--dry-run",
        "--set",
        "destination.data_center=${MOENGAGE_DATA_API_KEY}",
        env=ENV,
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "--set destination.data_center:1:1: error: destination setting 'data_center' (from "
        "${MOENGAGE_DATA_API_KEY}): unknown data center '***'; use one of 01, 02, 03, 04, 05, "
        "06, 101\n1 problem found\n"
    )
    assert SECRET.upper() not in result.stderr and key not in result.stderr


def test_derived_forms_in_records_are_scrubbed(cli: Callable[..., Result], tmp_path: Path) -> None:
    import base64
    from urllib.parse import quote

    token = base64.b64encode(f"WS_EDGES:{SECRET}".encode()).decode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        orjson.dumps(
            {
                "user_identities": {"customer_id": "c1"},
                "events": [
                    {
                        "event_type": "custom_event",
                        "data": {
                            "event_name": "Leaky",
                            "timestamp_unixtime_ms": 1700000000000,
                            "custom_attributes": {
                                "auth": f"Basic {token}",
                                "url": quote(SECRET, safe=""),
                            },
                        },
                    }
                ],
            }
        )
        + b"\n"
    )
    report = tmp_path / "report.json"
    result = cli("run", BUNDLE, "--input", str(path), "--dry-run", "--report", str(report), env=ENV)
    assert result.exit_code == 0
    (request,) = [orjson.loads(x) for x in result.stdout.splitlines()]
    attributes = request["body"]["elements"][0]["actions"][0]["attributes"]
    assert (attributes["auth"], attributes["url"]) == ("Basic ***", "***")
    explained = cli("explain", BUNDLE, "--event", str(path), env=ENV)
    assert explained.exit_code == 0 and "Basic ***" in explained.stdout
    for text in (result.stdout, result.stderr, report.read_text(), explained.stdout):
        assert SECRET not in text and token not in text


def test_diff_never_shows_a_secret(
    cli: Callable[..., Result], tmp_path: Path, write: Callable[[str, str], Path]
) -> None:
    import base64

    token = base64.b64encode(f"WS_EDGES:{SECRET}".encode()).decode()
    old = write(
        "old.yaml",
        """
        bundle: t
        source: {connector: mparticle}
        destination:
          connector: moengage
          settings: {workspace_id: WS_EDGES, data_api_key: "${MOENGAGE_DATA_API_KEY}"}
        identity:
          candidates: {customer_id: batch.user_identities.customer_id}
        events:
          - name: custom
            when: event.event_type == 'custom_event'
            event_name: "{{ event.data.event_name }}"
        """,
    )
    new = write(
        "new.yaml",
        old.read_text() + "    attributes:\n      auth: event.data.custom_attributes.auth\n",
    )
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        orjson.dumps(
            {
                "user_identities": {"customer_id": "c1"},
                "events": [
                    {
                        "event_type": "custom_event",
                        "data": {
                            "event_name": "Leaky",
                            "custom_attributes": {"auth": f"Basic {token}"},
                        },
                    }
                ],
            }
        )
        + b"\n"
    )
    result = cli("diff", str(old), str(new), "--input", str(path), env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "  line 1 event 0 ('Leaky'): (none) -> \"Basic ***\"" in result.stdout
    assert token not in result.stdout + result.stderr


def test_coverage_and_diff_take_inputs_as_run_does(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + batch("c1") + b"x" * (17 << 20) + b"\n" + batch("c2"))
    result = cli("coverage", BUNDLE, "--input", str(path), env=ENV)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("measured 3 records in ")  # the long line counted too
    for command in (["coverage", BUNDLE], ["diff", BUNDLE, BUNDLE]):
        refused = cli(*command, "--input", str(tmp_path))
        usage_error(
            refused,
            f"input {tmp_path} is a directory; --input takes a JSON Lines file, or - for stdin",
        )
    same = cli("diff", BUNDLE, BUNDLE, "--input", "/dev/null")
    assert same.exit_code == 0, same.stderr
