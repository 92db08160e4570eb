"""Property: whatever bytes arrive, `moerules run --dry-run` accounts for every line.

Random bytes, byte-order marks, blank, huge and valid lines, with or without a final newline,
through the CLI as a user runs it (stdin): never a traceback, exit 0, the report balanced
(items_in == delivered + dropped + dead_lettered), one report line per non-blank input line,
one dead letter per dead-lettered item, each in bounded time (Hypothesis' deadline).
"""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moerules.engine.cli.main import main

ENV = {"MOENGAGE_WORKSPACE_ID": "WS_FUZZ", "MOENGAGE_DATA_API_KEY": "fuzz-data-api-key"}
MAX_LINE = 2048  # small, so huge lines stay cheap to generate
BOM = b"\xef\xbb\xbf"
FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=5),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
attributes = st.dictionaries(st.text(max_size=10), scalars, max_size=4)
events = st.fixed_dictionaries(
    {
        "event_type": st.sampled_from(
            ["custom_event", "commerce_event", "screen_view", "session_start", "other", ""]
        ),
        "data": st.fixed_dictionaries(
            {},
            optional={
                "event_name": st.one_of(st.text(max_size=15), scalars),
                "custom_attributes": st.one_of(attributes, scalars),
                "timestamp_unixtime_ms": st.one_of(st.integers(-1, 2**45), scalars),
                "product_action": st.fixed_dictionaries(
                    {},
                    optional={
                        "action": st.sampled_from(["purchase", "add_to_cart", "refund", "x"]),
                        "total_amount": scalars,
                        "products": st.lists(st.one_of(attributes, scalars), max_size=3),
                    },
                ),
            },
        ),
    }
)
batches = st.fixed_dictionaries(
    {},
    optional={
        "environment": st.sampled_from(["production", "development"]),
        "mpid": scalars,
        "user_identities": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "customer_id": st.one_of(st.text(max_size=12), scalars),
                    "email": st.one_of(st.emails(), scalars),
                },
            ),
            scalars,
        ),
        "user_attributes": st.one_of(attributes, scalars),
        "events": st.one_of(st.lists(st.one_of(events, scalars), max_size=4), scalars),
    },
).map(lambda b: json.dumps(b).encode())  # the stdlib writes integers beyond 64 bits too


no_newline = st.binary(max_size=120).map(lambda b: b.replace(b"\n", b""))
lines = st.one_of(
    batches,
    batches.map(lambda b: BOM + b),  # a BOM past line 1 is data: a malformed line
    no_newline,
    st.sampled_from([b"", b" ", b"\t", b"\r", b" \r\t", b"{}", b"[]", b"null", b'"x"']),
    st.integers(MAX_LINE + 1, 3 * MAX_LINE).map(lambda n: b'{"events": [' + b"1," * n),
    st.integers(MAX_LINE - 20, MAX_LINE).map(lambda n: (b'{"pad": "' + b"y" * n)[:n] + b'"}'),
)


def counted_lines(data: bytes) -> int:
    """How many lines the run must report: every non-blank line, every line over the limit."""
    pieces = data.removeprefix(BOM).split(b"\n")
    if not pieces[-1]:
        pieces.pop()  # the input ended with a newline
    return sum(1 for p in pieces if len(p) > MAX_LINE or not (p + b"\n").isspace())


def dry_run(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory() as tmp:
        report, dead = Path(tmp) / "report.json", Path(tmp) / "dead.jsonl"
        result = CliRunner().invoke(
            main,
            [
                "run",
                "mparticle-to-moengage",
                "--input",
                "-",
                "--dry-run",
                "--output",
                str(Path(tmp) / "requests.jsonl"),
                "--report",
                str(report),
                "--dead-letter",
                str(dead),
                "--max-line-bytes",
                str(MAX_LINE),
            ],
            input=data,
            env=ENV,
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.stderr
        assert "Traceback" not in result.stderr
        letters = [orjson.loads(x) for x in dead.read_bytes().splitlines()] if dead.exists() else []
        return orjson.loads(report.read_bytes()), letters


def check(data: bytes) -> None:
    report, letters = dry_run(data)
    assert report["balanced"]
    assert report["items_in"] == (
        report["delivered"] + report["dropped_total"] + report["dead_lettered_total"]
    )
    assert report["lines_in"] == counted_lines(data)
    assert len(letters) == report["dead_lettered_total"]
    last_line = data.count(b"\n") + 1
    assert all(1 <= letter["line"] <= last_line for letter in letters)
    too_long = [x for x in letters if x["reason"] == "line too long"]
    assert all(len(x["raw"].encode()) <= 3 * 1024 for x in too_long)  # an excerpt, not a line


@FUZZ
@given(bom=st.booleans(), body=st.lists(lines, max_size=10), final_newline=st.booleans())
def test_every_line_is_accounted_for(bom: bool, body: list[bytes], final_newline: bool) -> None:
    check((BOM if bom else b"") + b"\n".join(body) + (b"\n" if final_newline else b""))


@FUZZ
@given(data=st.binary(max_size=6000))
def test_any_bytes_at_all(data: bytes) -> None:
    check(data)
