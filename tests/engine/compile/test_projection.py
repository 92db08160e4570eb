"""Projected decoding: only what the rules read is built, and nothing a user sees changes."""

from __future__ import annotations

import dataclasses
import io
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.benchmarks.generate import batches
from moerules.engine.api import dry_run, iter_lines, load_bundle
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.compile.expressions import parse
from moerules.engine.compile.projection import ReadSet, decoder, jmespath_reads, template_reads
from moerules.engine.compile.templates import environment

from tests.conftest import EXAMPLES

SETS = ["routing.projects=[{name: Brand A, code: BRANDA01}, {name: Brand B, code: BRANDB01}]"]
ENV = {"MOENGAGE_WORKSPACE_ID": "WS1", "MOENGAGE_DATA_API_KEY": "secret-key-1"}


Counts = dict[str, Any]


def run(compiled: CompiledBundle, lines: list[bytes], tmp: Path) -> tuple[bytes, bytes, Counts]:
    """Requests, dead letters and report counts of a dry run over ``lines``."""
    src = tmp / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    dead = tmp / f"dead-{compiled.projected}.jsonl"
    out = io.BytesIO()
    report = dry_run(compiled, iter_lines(str(src)), out, dead_letter=dead)
    counts = report.to_dict()
    counts.pop("elapsed_seconds", None)
    return out.getvalue(), dead.read_bytes() if dead.exists() else b"", counts


Outcome = tuple[bytes, bytes, Counts]


def both(compiled: CompiledBundle, lines: list[bytes], tmp: Path) -> tuple[Outcome, Outcome]:
    full = dataclasses.replace(compiled, projected=False)
    return run(compiled, lines, tmp), run(full, lines, tmp)


@pytest.fixture(scope="module")
def shipped() -> CompiledBundle:
    return load_bundle("mparticle-to-moengage", SETS, env=ENV)


def test_the_shipped_bundle_decodes_only_what_it_reads(shipped: CompiledBundle) -> None:
    decode = decoder(shipped.reads, "events")
    assert decode is not None
    batch = next(batches(1, seed=7))
    got = decode(orjson.dumps(batch))
    assert set(got) < set(batch)  # mpid, ip, source_info... skipped
    read = ("platform", "android_advertising_id", "ios_advertising_id")  # what the rules read
    assert got["device_info"] == {k: v for k, v in batch["device_info"].items() if k in read}
    assert set(batch["device_info"]) - set(read)  # ... of more
    assert "device_current_state" not in orjson.dumps(got).decode()
    for event, full in zip(got["events"], batch["events"], strict=True):
        assert event["event_type"] == full["event_type"]
        if "custom_attributes" in full["data"]:  # read whole: every entry kept
            assert event["data"]["custom_attributes"] == full["data"]["custom_attributes"]


def test_generated_batches_give_identical_output(shipped: CompiledBundle, tmp_path: Path) -> None:
    lines = [orjson.dumps(b) for b in batches(1500, seed=11)]
    projected, full = both(shipped, lines, tmp_path)
    assert projected[0] == full[0] and projected[0].count(b"\n") > 5
    assert projected[1] == full[1] and projected[1]  # dead letters: full records
    assert projected[2] == full[2]


def test_the_examples_give_identical_output(tmp_path: Path) -> None:
    compiled = load_bundle(EXAMPLES / "acme-overlay.yaml", env=ENV)
    lines = (EXAMPLES / "mparticle-batches.jsonl").read_bytes().splitlines()
    projected, full = both(compiled, lines, tmp_path)
    assert projected == full


ODD_SHAPES = [
    # shapes the projected types do not describe: the full decode judges each line
    b'{"user_identities": {"customer_id": "c1"}, "events": [null, 3, "x"]}',
    b'{"user_identities": {"customer_id": "c1"}, "events": {"not": "a list"}}',
    b'{"user_identities": {"customer_id": "c1"}, "events": [{"event_type": "custom_event",'
    b' "data": "not an object"}]}',
    b'{"user_identities": "c1", "events": []}',
    b'{"user_identities": {"customer_id": "c1"}, "device_info": [1], "events": '
    b'[{"event_type": "custom_event", "data": {"event_name": "E"}}]}',
    b'{"user_identities": {"customer_id": "c1"}, "events": [{"event_type": "custom_event",'
    b' "data": {"event_name": "caf\xc3"}}]}',  # bad UTF-8 where a rule reads
    b'{"user_identities": {"customer_id": "c1"}, "events": [{"event_type": "custom_event",'
    b' "data": {"event_name": "E", "custom_attributes": {"n": 1e400}}}]}',
    b"[1, 2]",
    b'{"events": [ not json',
    b'{"user_identities": {"customer_id": null}, "device_info": null, "events": null}',
]


@pytest.mark.parametrize("line", ODD_SHAPES, ids=range(len(ODD_SHAPES)))
def test_odd_shapes_fall_back_to_the_full_decode(
    shipped: CompiledBundle, line: bytes, tmp_path: Path
) -> None:
    projected, full = both(shipped, [line], tmp_path)
    assert projected == full


def test_a_dead_letter_carries_the_whole_event(shipped: CompiledBundle, tmp_path: Path) -> None:
    event = {
        "event_type": "commerce_event",
        "data": {
            "session_uuid": "s-1",
            "device_current_state": {"battery_level": 0.5},
            "product_action": {"action": "purchase", "products": [{"id": "p", "price": "oops"}]},
        },
    }
    line = orjson.dumps({"mpid": 42, "user_identities": {"customer_id": "c1"}, "events": [event]})
    (_, dead, counts), _ = both(shipped, [line], tmp_path)
    letter = orjson.loads(dead.splitlines()[0])
    assert letter["reason"] == "Products[].Price: cannot convert to float"
    assert letter["record"] == event  # unread fields included
    assert letter["event_index"] == 0
    assert counts["dead_lettered"] == {"Products[].Price: cannot convert to float": 1}


def test_fields_no_rule_reads_are_not_judged(shipped: CompiledBundle, tmp_path: Path) -> None:
    """The documented difference: bad UTF-8 where no rule reads no longer fails the line."""
    line = (
        b'{"user_identities": {"customer_id": "c1"}, "ip": "\xff", "events": '
        b'[{"event_type": "custom_event", "data": {"event_name": "Opened"}}]}'
    )
    (out, dead, counts), (_, full_dead, full_counts) = both(shipped, [line], tmp_path)
    assert b'"action":"Opened"' in out and dead == b""
    assert counts["delivered_events"] == 1 and counts["unreadable_lines"] == 0
    assert full_counts["delivered_events"] == 0 and b"malformed JSON" in full_dead


def write_bundle(tmp: Path, events: str) -> CompiledBundle:
    path = tmp / "bundle.yaml"
    path.write_text(
        textwrap.dedent("""\
        bundle: t
        source: {connector: mparticle}
        destination:
          connector: moengage
          settings: {workspace_id: WS, data_api_key: K}
        identity:
          candidates: {customer_id: batch.user_identities.customer_id}
        events:
        """)
        + textwrap.indent(textwrap.dedent(events), "  ")
    )
    return load_bundle(path)


def test_a_template_using_an_event_whole_reads_it_whole(tmp_path: Path) -> None:
    compiled = write_bundle(
        tmp_path,
        """\
        - name: custom
          when: event.event_type == 'custom_event'
          event_name: "{{ event.data.event_name }}"
          attributes:
            everything: {template: "{{ event | string }}"}
        """,
    )
    assert compiled.reads.root("event") == {}  # read whole: {} is WHOLE
    line = orjson.dumps(
        {
            "user_identities": {"customer_id": "c"},
            "events": [{"event_type": "custom_event", "data": {"event_name": "E"}, "extra": 1}],
        }
    )
    projected, full = both(compiled, [line], tmp_path)
    assert projected == full and b"extra" in projected[0]


def test_jmespath_reads() -> None:
    def reads(text: str) -> list[tuple[str | int, ...]]:
        return sorted(jmespath_reads(parse(text)), key=str)

    assert reads("event.data.x") == [("event", "data", "x")]
    assert reads("event.data.products[0].price") == [("event", "data", "products", 0, "price")]
    assert reads("event.data.products[*].price") == [("event", "data", "products")]
    assert reads("event.items[?price > `1`].id") == [("event", "items")]
    assert reads("length(event.a) > `0` && batch.b == 'x'") == [("batch", "b"), ("event", "a")]
    assert reads("`1`") == []
    assert reads("@") == [()]


def test_template_reads() -> None:
    env = environment({})
    tree = env.parse("{{ event.data['event name'] | lower }}-{{ batch.mpid }}{{ other.x }}")
    assert sorted(template_reads(tree, {"event", "batch"})) == [
        ("batch", "mpid"),
        ("event", "data", "event name"),
    ]
    assert template_reads(env.parse("{{ event }}"), {"event"}) == [("event",)]
    # a computed key: what is under it is read whole, and the key's own paths are read
    tree = env.parse("{{ event.data[batch.key].x }}{{ (event.y | lower).z }}")
    assert sorted(template_reads(tree, {"event", "batch"})) == [
        ("batch", "key"),
        ("event", "data"),
        ("event", "y"),
    ]


def test_read_set_merges_paths() -> None:
    reads = ReadSet()
    reads.add(("event", "data", "a"))
    reads.add(("event", "data"))  # whole: covers data.a
    reads.add(("event", "data", "b"))  # already whole
    reads.add(("event", "list", 0, "x"))  # an element: the list whole
    assert reads.tree == {"event": {"data": {}, "list": {}}}
    reads.add(())
    assert reads.everything and reads.root("batch") == {}
