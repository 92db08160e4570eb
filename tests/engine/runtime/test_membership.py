"""The membership state file: what is written when, what a reader sees, what it refuses."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from moerules.engine.runtime.membership import (
    CohortKey,
    Export,
    MembershipStore,
    StateError,
    members_of,
    summarise,
)

from tests.conftest import Result

KEY = CohortKey("WS@https://api-01.moengage.com", "mixpanel", "1234")


def test_words_pages_and_acknowledgements_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cohorts.sqlite"
    store = MembershipStore(path, durable=True)
    cohort = store.cohort(KEY)
    store.begin()
    seq = store.new_message(cohort, "s-1")
    store.name(cohort, "Power Users", "Power Users", None)
    store.want(cohort, "d1", True, (0, seq))
    store.want(cohort, "d2", True, (0, seq))
    store.pending(cohort, "d1")
    store.pending(cohort, "d2")
    store.page(cohort, Export("s-2", 2, (0, seq + 1)), 1, ["d9"])
    store.commit()
    store.synced(cohort, ["d1"], True, settled=["d1"])  # d2's answer never came
    store.close()

    again = MembershipStore(path, durable=True)
    loaded = again.cohort(KEY)
    assert loaded.members["d1"].synced and not loaded.members["d1"].pending
    assert not loaded.members["d2"].synced and loaded.members["d2"].pending
    assert loaded.exports["s-2"].got == {1: ["d9"]} and loaded.exports["s-2"].pages == 2
    assert again.message(loaded, "s-1") == (seq, False)
    assert again.new_message(loaded, "s-3") == seq + 1  # the order of first sight goes on
    again.close()
    (row,) = summarise(path)
    assert (row.segment, row.synced, row.wanted, row.to_add, row.to_remove) == (
        "Power Users",
        1,
        2,
        1,
        0,
    )
    assert row.pending_exports == [("s-2", 1, 2)]
    assert members_of(path, "1234") == {(KEY.scope, "mixpanel"): ["d1"]}


def test_a_reader_never_writes(tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite"
    store = MembershipStore(missing, durable=False)
    cohort = store.cohort(KEY)
    store.want(cohort, "d1", True, (0, store.new_message(cohort, "s-1")))
    store.close()
    assert not missing.exists()

    path = tmp_path / "cohorts.sqlite"
    MembershipStore(path, durable=True).close()
    before = path.read_bytes()
    reader = MembershipStore(path, durable=False)
    cohort = reader.cohort(KEY)
    reader.want(cohort, "d1", True, (0, 1))
    reader.synced(cohort, ["d1"], True, settled=["d1"])
    reader.close()
    assert path.read_bytes() == before
    assert list(summarise(path)) == []


def test_other_files_are_refused_clearly(tmp_path: Path, cli: Callable[..., Result]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some text that is long enough" * 20)
    with pytest.raises(StateError, match="not a moerules membership state"):
        MembershipStore(text, durable=True)
    with pytest.raises(StateError, match="not a moerules membership state"):
        MembershipStore(text, durable=False)
    newer = tmp_path / "newer.sqlite"
    MembershipStore(newer, durable=True).close()
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value='2' WHERE key='format'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="membership state format 2; this moerules reads format 1"):
        MembershipStore(newer, durable=False)
    result = cli("cohorts", str(newer))
    assert result.exit_code == 2 and "format 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_memory_keeps_nothing(tmp_path: Path) -> None:
    store = MembershipStore(":memory:", durable=True)
    assert not store.durable and store.db is None
    cohort = store.cohort(KEY)
    store.begin()
    store.want(cohort, "d1", True, (0, store.new_message(cohort, "s")))
    store.commit()
    assert store.cohort(KEY).members["d1"].wanted
    store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["text", "directory"])
def test_a_state_that_cannot_be_used_is_a_one_line_error(
    cli: Callable[..., Result], tmp_path: Path, kind: str
) -> None:
    state = tmp_path / "state"
    if kind == "text":
        state.write_text("not a database at all, just some text that is long enough" * 20)
    else:
        state.mkdir()
    payload = tmp_path / "payload.json"
    payload.write_text(
        '{"action": "add_members", "parameters": {"mixpanel_cohort_id": "1", '
        '"mixpanel_cohort_name": "P", "members": [{"mixpanel_distinct_id": '
        '"d1"}]}}\n'
    )
    env = {"MOENGAGE_WORKSPACE_ID": "WS", "MOENGAGE_DATA_API_KEY": "cohort-key-123"}
    for args in (
        ["run", "mixpanel-cohorts-to-moengage", "--input", str(payload), "--dry-run"],
        [
            "run",
            "mixpanel-cohorts-to-moengage",
            "--input",
            str(payload),
            "--state-dir",
            str(tmp_path / "run"),
            "--set",
            "destination.endpoint=http://127.0.0.1:9",
        ],
        ["explain", "mixpanel-cohorts-to-moengage", "--event", str(payload)],
    ):
        result = cli(*args, "--set", f"destination.state={state}", env=env)
        assert result.exit_code == 2, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"moerules: error: {state}: ")
        assert (
            "not a moerules membership state"
            if kind == "text"
            else "must be a file, not a directory"
        ) in line
