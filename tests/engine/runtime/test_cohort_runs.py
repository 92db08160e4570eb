"""Cohort flows over real HTTP against the MoEngage emulator's Cohort Sync (127.0.0.1).

Whatever arrives (full exports in pages, diffs, repeats, pages out of order, a user entering
and leaving many times, a crash between sending and recording), MoEngage's membership after
the runs equals the partner's latest, and the state records exactly what MoEngage holds.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from moerules.connectors.emulation import Fault, MoEngageEmulator, serve
from moerules.engine.runtime.membership import summarise
from starlette.requests import Request
from starlette.responses import Response

from tests.conftest import EXAMPLES, Result
from tests.engine.runtime.cohort_helpers import (
    AMPLITUDE,
    ENV,
    KEY,
    MIXPANEL,
    WS,
    amplitude,
    mixpanel,
    run,
    run_args,
    sent,
    spawn,
    stored,
    write_lines,
)
from tests.engine.runtime.conftest import wait_until

CLI = Callable[..., Result]


@pytest.fixture
def emulator() -> Iterator[tuple[MoEngageEmulator, str]]:
    emu = MoEngageEmulator(WS, KEY)
    with serve(emu) as url:
        yield emu, url


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "cohorts.sqlite"


def report_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- full exports ---------------------------------------------------------------------------
def test_a_paged_full_export_then_a_smaller_one_removes_who_left(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    first = write_lines(
        tmp_path / "first.jsonl",
        [
            mixpanel("members", ["d1", "d2"], session="s-1", page=1, pages=3),
            mixpanel("members", ["d3", "d4"], session="s-1", page=2, pages=3),
            mixpanel("members", ["d5", "d6"], session="s-1", page=3, pages=3),
        ],
    )
    result = run(cli, MIXPANEL, first, url, state, "--report", str(tmp_path / "r1.json"))
    assert result.exit_code == 0, result.stderr
    assert emu.cohort_members("1234") == {"d1", "d2", "d3", "d4", "d5", "d6"}
    assert sent(emu) == [("add_members", ["d1", "d2", "d3", "d4", "d5", "d6"])]
    assert stored(state, "1234") == emu.cohort_members("1234")

    second = write_lines(
        tmp_path / "second.jsonl",
        [
            mixpanel("members", ["d1", "d3"], session="s-2", page=1, pages=2),
            mixpanel("members", ["d6", "d7"], session="s-2", page=2, pages=2),
        ],
    )
    result = run(cli, MIXPANEL, second, url, state, "--report", str(tmp_path / "r2.json"))
    assert result.exit_code == 0, result.stderr
    assert emu.cohort_members("1234") == {"d1", "d3", "d6", "d7"}
    assert stored(state, "1234") == emu.cohort_members("1234")
    requests = [r for r in emu.received if r.status == 200][1:]
    assert [r.body for r in requests] == [
        {
            "action": "add_members",
            "partner": "mixpanel",
            "parameters": {
                "cohort_name": "Power Users",
                "cohort_id": "1234",
                "members": [{"uid": "d7"}],
            },
        },
        {
            "action": "remove_members",
            "partner": "mixpanel",
            "parameters": {
                "cohort_name": "Power Users",
                "cohort_id": "1234",
                "members": [{"uid": "d2"}, {"uid": "d4"}, {"uid": "d5"}],
            },
        },
    ]
    assert requests[0].headers["moe-appkey"] == WS
    report = report_of(tmp_path / "r2.json")
    assert report["cohorts"] == [
        {
            "partner": "mixpanel",
            "cohort_id": "1234",
            "name": "Power Users",
            "segment": "Power Users",
            "added": 1,
            "removed": 3,
            "unchanged": 3,
            "unmatched": 0,
            "repeats": 0,
            "superseded": 0,
            "failed": 0,
            "refused_payloads": 0,
            "requests": 2,
            "incomplete_exports": [],
            "superseded_exports": [],
        }
    ]
    assert report["balanced"] and report["delivered"] == 4 and report["items_in"] == 7
    assert "2 requests acknowledged" in result.stderr


def test_pages_out_of_order_and_across_runs(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    pages = [
        mixpanel("members", [f"d{page}a", f"d{page}b"], session="s-1", page=page, pages=4)
        for page in (1, 2, 3, 4)
    ]
    one = write_lines(tmp_path / "one.jsonl", [pages[3], pages[1]])
    result = run(cli, MIXPANEL, one, url, state)
    assert result.exit_code == 0
    assert sent(emu) == []  # nothing until every page arrived
    assert "export 's-1' is incomplete (2 of 4 pages arrived)" in result.stderr
    two = write_lines(tmp_path / "two.jsonl", [pages[2], pages[3], pages[0]])  # a repeat too
    result = run(cli, MIXPANEL, two, url, state)
    assert result.exit_code == 0, result.stderr
    assert sent(emu) == [("add_members", ["d1a", "d1b", "d2a", "d2b", "d3a", "d3b", "d4a", "d4b"])]
    assert "incomplete" not in result.stderr


def test_an_unfinished_export_removes_nobody(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    full = write_lines(
        tmp_path / "full.jsonl", [mixpanel("members", ["d1", "d2", "d3"], session="s-1")]
    )
    assert run(cli, MIXPANEL, full, url, state).exit_code == 0
    before = list(emu.received)
    partial = write_lines(
        tmp_path / "partial.jsonl",
        [
            mixpanel("members", ["d1"], session="s-2", page=1, pages=3),
            mixpanel("members", ["d9"], session="s-2", page=3, pages=3),
        ],
    )
    result = run(cli, MIXPANEL, partial, url, state, "--report", str(tmp_path / "r.json"))
    assert result.exit_code == 0
    assert emu.received == before  # nothing sent: no removal, no add
    assert emu.cohort_members("1234") == {"d1", "d2", "d3"}
    assert (
        "warning: mixpanel cohort 1234 ('Power Users'): export 's-2' is incomplete "
        "(2 of 3 pages arrived): 2 members held, and nobody is removed until every page "
        "arrives"
    ) in result.stderr
    assert report_of(tmp_path / "r.json")["cohorts"][0]["incomplete_exports"] == [
        {"key": "s-2", "pages_arrived": 2, "pages": 3, "members_held": 2}
    ]
    listing = cli("cohorts", str(state))
    assert listing.exit_code == 0
    assert "s-2 (2 of 3 pages)" in listing.stdout


# -- diffs, repeats, order --------------------------------------------------------------------
def test_diffs_send_only_the_difference(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    lines = write_lines(
        tmp_path / "in.jsonl",
        [
            mixpanel("members", ["d1", "d2"], session="s-1"),
            mixpanel("add_members", ["d3", "d1"], session="s-2"),
            mixpanel("remove_members", ["d2", "d8"], session="s-3"),
        ],
    )
    assert run(cli, MIXPANEL, lines, url, state).exit_code == 0
    assert sent(emu) == [("add_members", ["d1", "d2", "d3"]), ("remove_members", ["d2"])]
    assert emu.cohort_members("1234") == stored(state, "1234") == {"d1", "d3"}


def test_duplicate_deliveries_change_nothing(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    entered = amplitude(True, ["u1", "u2"], message="m-1", at=1_718_000_000)
    left = amplitude(False, ["u2"], message="m-2", at=1_718_003_600)
    result = run(
        cli,
        AMPLITUDE,
        write_lines(tmp_path / "a.jsonl", [entered, entered, left, entered]),
        url,
        state,
    )
    assert result.exit_code == 0, result.stderr
    assert sent(emu) == [("add_members", ["u1", "u2"]), ("remove_members", ["u2"])]
    # the same payloads delivered again in a later run: nothing goes
    result = run(cli, AMPLITUDE, write_lines(tmp_path / "b.jsonl", [left, entered]), url, state)
    assert result.exit_code == 0
    assert len(sent(emu)) == 2
    assert "2  repeat of a word already received" in result.stderr  # left u2, entered u1
    assert "1  superseded by a later word" in result.stderr  # entered u2, before it left
    assert emu.cohort_members("ab12cd") == stored(state, "ab12cd") == {"u1"}


def test_a_late_repeat_after_a_later_export_changes_nothing(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    """The state forgets users a later full export leaves out; a repeat of an older diff that
    names one of them (Mixpanel retrying late) is older than that export: nothing changes."""
    emu, url = emulator
    added = mixpanel("add_members", ["d5"], session="s-1")
    runs = [
        [added, mixpanel("remove_members", ["d5"], session="s-2")],
        [mixpanel("members", ["d1"], session="s-3")],  # d5 out and acknowledged: forgotten
        [added],
    ]
    for n, lines in enumerate(runs):
        result = run(cli, MIXPANEL, write_lines(tmp_path / f"{n}.jsonl", lines), url, state)
        assert result.exit_code == 0, result.stderr
    assert sent(emu) == [
        ("add_members", ["d5"]),
        ("remove_members", ["d5"]),
        ("add_members", ["d1"]),
    ]
    assert "1  superseded by a later word" in result.stderr
    assert emu.cohort_members("1234") == stored(state, "1234") == {"d1"}


def test_a_user_moving_in_and_out_many_times(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    """Forty words on one user, computed in order and delivered shuffled over three runs: the
    segment ends as the latest computed word says."""
    emu, url = emulator
    words = [
        amplitude(n % 2 == 0, ["u1"], message=f"m-{n}", at=1_718_000_000 + n * 60)
        for n in range(40)
    ]
    words.append(amplitude(True, ["u2"], message="m-other", at=1_718_000_000))
    rng = random.Random(20240612)
    rng.shuffle(words)
    latest_in = False  # word 39 (odd): left
    for part in range(3):
        chunk = words[part * 14 : (part + 1) * 14]
        path = write_lines(tmp_path / f"part{part}.jsonl", chunk)
        result = run(cli, AMPLITUDE, path, url, state)
        assert result.exit_code == 0, result.stderr
        assert emu.cohort_members("ab12cd") == stored(state, "ab12cd")
    assert ("u1" in emu.cohort_members("ab12cd")) is latest_in
    assert emu.cohort_members("ab12cd") == {"u2"}
    # and within one run, in arrival order, each change follows the one before
    emu.reset()
    state.unlink()
    ordered = write_lines(
        tmp_path / "ordered.jsonl",
        [amplitude(n % 2 == 0, ["u1"], message=f"o-{n}", at=n + 1) for n in range(9)],
    )
    assert run(cli, AMPLITUDE, ordered, url, state).exit_code == 0
    assert [action for action, _ in sent(emu)] == ["add_members", "remove_members"] * 4 + [
        "add_members"
    ]
    assert emu.cohort_members("ab12cd") == stored(state, "ab12cd") == {"u1"}


# -- names, identities, sizes ------------------------------------------------------------------
def test_invalid_names_are_refused_naming_the_character(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    lines = write_lines(
        tmp_path / "in.jsonl",
        [
            amplitude(True, ["u1"], cohort="v", name="VIP: Gold"),
            amplitude(True, ["u1"], cohort="ok", name="Fine"),
        ],
    )
    dead = tmp_path / "dead.jsonl"
    result = run(
        cli, AMPLITUDE, lines, url, state, "--dead-letter", str(dead), "--fail-on-dead-letter"
    )
    assert result.exit_code == 3
    assert sent(emu) == [("add_members", ["u1"])]
    assert emu.cohorts["ok"].name == "[Amplitude][Fine]" and "v" not in emu.cohorts
    (letter,) = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert letter["reason"] == "invalid cohort name"
    assert letter["error"].startswith("cohort name '[Amplitude][VIP: Gold]' contains ':'")
    assert letter["record"]["cohort_name"] == "VIP: Gold"
    # cleaned only when the bundle says so, explicitly
    result = run(
        cli, AMPLITUDE, lines, url, state, "--from-start", "--set", "destination.cohort_names=clean"
    )
    assert result.exit_code == 0
    assert emu.cohorts["v"].name == "[Amplitude][VIP_ Gold]"


def test_unmatched_users_are_counted_and_never_sent(cli: CLI, tmp_path: Path, state: Path) -> None:
    """No usable id: unmatched, never sent. An id MoEngage does not have: sent, and MoEngage
    leaves it out (Cohort Sync never creates users, seed 001)."""
    emu = MoEngageEmulator(WS, KEY, known_users=["u1", "u2"])
    with serve(emu) as url:
        lines = write_lines(
            tmp_path / "in.jsonl",
            [
                {
                    "cohort_name": "P",
                    "cohort_id": "p",
                    "in_cohort": True,
                    "users": [
                        {"user_id": "u1"},
                        {"user_id": None, "moe_anonymous_id": "anon-9"},
                        {"user_id": None},
                        {"user_id": "null"},
                        {"user_id": "u2"},
                    ],
                }
            ],
        )
        result = run(cli, AMPLITUDE, lines, url, state, "--report", str(tmp_path / "r.json"))
        assert result.exit_code == 0, result.stderr
        assert sent(emu) == [("add_members", ["u1", "anon-9", "u2"])]
        assert emu.cohort_members("p") == {"u1", "u2"}
        assert emu.received[-1].rejected == (1,)  # MoEngage could not match anon-9
    report = report_of(tmp_path / "r.json")
    assert report["dropped"] == {"unmatched: no usable user id": 2}
    assert report["cohorts"][0]["added"] == 3 and report["cohorts"][0]["unmatched"] == 2
    assert "3 added, 0 removed, 0 unchanged, 2 unmatched" in result.stderr


def test_requests_split_to_stay_within_128_kb(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    ids = [f"user-{n:06d}-{'x' * 40}" for n in range(7000)]
    pages = [
        mixpanel("members", ids[i : i + 1000], session="big", page=i // 1000 + 1, pages=7)
        for i in range(0, 7000, 1000)
    ]
    result = run(cli, MIXPANEL, write_lines(tmp_path / "big.jsonl", pages), url, state)
    assert result.exit_code == 0, result.stderr
    sizes = [len(orjson.dumps(r.body)) for r in emu.received]
    assert len(sizes) == 4 and all(r.status == 200 for r in emu.received)
    assert all(size <= 128 * 1024 for size in sizes) and max(sizes) > 120 * 1024
    assert emu.cohort_members("1234") == set(ids)


def test_a_413_splits_the_request(cli: CLI, state: Path, tmp_path: Path) -> None:
    """A MoEngage that takes less than documented answers 413: the request goes in halves."""
    emu = MoEngageEmulator(WS, KEY, cohort_max_body_bytes=8 * 1024)
    with serve(emu) as url:
        ids = [f"u{n:05d}" for n in range(1500)]
        result = run(
            cli,
            MIXPANEL,
            write_lines(tmp_path / "in.jsonl", [mixpanel("members", ids, session="s")]),
            url,
            state,
        )
        assert result.exit_code == 0, result.stderr
        assert emu.cohort_members("1234") == set(ids) == stored(state, "1234")
        statuses = [r.status for r in emu.received]
        assert statuses[0] == 413 and statuses.count(200) >= 4


# -- pacing and verdicts -----------------------------------------------------------------------
def test_paced_within_300_requests_a_minute(cli: CLI, state: Path, tmp_path: Path) -> None:
    """Requests leave evenly at 300 a minute (one every ~0.2 s after a burst of 3), so a
    MoEngage counting 300 a minute never says 429."""
    emu = MoEngageEmulator(WS, KEY)  # Cohort Sync: 300 requests a minute
    with serve(emu) as url:
        payloads = [
            amplitude(n % 2 == 0, ["u1"], message=f"m-{n}", at=n + 1) for n in range(14)
        ]  # each undoes the one before: 14 requests
        args = run_args(AMPLITUDE, write_lines(tmp_path / "in.jsonl", payloads), url, state)
        args[args.index("destination.requests_per_minute=6000")] = (
            "destination.requests_per_minute=300"
        )
        result = cli(*args, env=ENV)
        assert result.exit_code == 0, result.stderr
        arrivals = [r.at for r in emu.received]
        assert [r.status for r in emu.received] == [200] * 14
        assert arrivals[-1] - arrivals[0] > (14 - 3) * 0.19  # paced, not sent at once
        for first in range(len(arrivals)):  # never more than the burst and 5 a second
            assert sum(1 for t in arrivals if arrivals[first] <= t < arrivals[first] + 1) <= 8


def test_a_server_error_is_retried_and_a_wrong_key_stops(
    cli: CLI, state: Path, tmp_path: Path
) -> None:
    emu = MoEngageEmulator(WS, KEY)
    with serve(emu) as url:
        emu.faults.push(Fault("500"), count=2)
        lines = write_lines(tmp_path / "in.jsonl", [amplitude(True, ["u1"], message="m-1")])
        result = run(cli, AMPLITUDE, lines, url, state, "--backoff-base", "0.01")
        assert result.exit_code == 0, result.stderr
        assert emu.cohort_members("ab12cd") == stored(state, "ab12cd") == {"u1"}
        later = write_lines(
            tmp_path / "later.jsonl",
            [amplitude(False, ["u1"], message="m-2"), amplitude(True, ["u2"], message="m-3")],
        )
        bad = dict(ENV, MOENGAGE_DATA_API_KEY="not-the-key-at-all")
        result = cli(*run_args(AMPLITUDE, later, url, state), env=bad)
        assert result.exit_code == 4  # stopped: nothing more can succeed
        assert "HTTP 401" in result.stderr
        assert stored(state, "ab12cd") == {"u1"}  # nothing recorded that was not made
        result = run(cli, AMPLITUDE, later, url, state)
        assert result.exit_code == 0, result.stderr
        assert emu.cohort_members("ab12cd") == stored(state, "ab12cd") == {"u2"}


def test_a_change_that_failed_goes_with_the_next_run(cli: CLI, state: Path, tmp_path: Path) -> None:
    emu = MoEngageEmulator(WS, KEY)
    with serve(emu) as url:
        emu.faults.push(Fault("503"), count=3)
        lines = write_lines(tmp_path / "in.jsonl", [amplitude(True, ["u1"], message="m-1")])
        result = run(
            cli,
            AMPLITUDE,
            lines,
            url,
            state,
            "--max-attempts",
            "3",
            "--backoff-base",
            "0.01",
            "--dead-letter",
            str(tmp_path / "dead.jsonl"),
        )
        assert result.exit_code == 0
        assert "retries exhausted: HTTP 503" in result.stderr
        assert emu.cohort_members("ab12cd") == stored(state, "ab12cd") == set()
        replay = cli("replay", str(tmp_path / "dead.jsonl"), env=ENV)
        assert replay.exit_code == 2 and "--from-start" in replay.stderr
        # the next payload of the cohort brings the change that failed with it
        more = write_lines(tmp_path / "more.jsonl", [amplitude(True, ["u2"], message="m-2")])
        result = run(cli, AMPLITUDE, more, url, state)
        assert result.exit_code == 0, result.stderr
        assert sent(emu) == [("add_members", ["u1", "u2"])]
        assert emu.cohort_members("ab12cd") == stored(state, "ab12cd") == {"u1", "u2"}


# -- a crash between sending and recording ------------------------------------------------------
class HangingEmulator(MoEngageEmulator):
    """Applies its ``hang_on``-th Cohort Sync request, then does not answer until released:
    MoEngage made the change and the runner never heard it."""

    def __init__(self, *args: Any, hang_on: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang_on = hang_on
        self.count = 0
        self.hung = threading.Event()
        self.release = threading.Event()

    async def _cohort_sync(self, request: Request) -> Response:
        response = await super()._cohort_sync(request)
        self.count += 1
        if self.count == self.hang_on:
            self.hung.set()
            while not self.release.is_set():
                await anyio.sleep(0.02)
        return response


@pytest.mark.parametrize("hang_on", [1, 2])
def test_a_crash_between_sending_and_recording(tmp_path: Path, state: Path, hang_on: int) -> None:
    """The runner is killed (SIGKILL) while MoEngage has applied a request the runner has not
    recorded. The state records only what was acknowledged; the same command again converges
    and removes nobody still in the cohort."""
    emu = HangingEmulator(WS, KEY, hang_on=hang_on)
    with serve(emu) as url:
        lines = write_lines(
            tmp_path / "in.jsonl",
            [
                mixpanel("members", ["d1", "d2"], session="s-1", page=1, pages=2),
                mixpanel("members", ["d3", "d4"], session="s-1", page=2, pages=2),
                mixpanel("members", ["d1", "d3", "d5"], session="s-2"),
            ],
        )
        args = run_args(MIXPANEL, lines, url, state)
        process = spawn(args, tmp_path)
        try:
            assert wait_until(emu.hung.is_set, timeout=30), "the request never arrived"
            applied = emu.cohort_members("1234")
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=10)
        finally:
            emu.release.set()
        assert process.returncode == -signal.SIGKILL
        if hang_on == 1:  # MoEngage added everyone; the state knows of nothing acknowledged
            assert applied == {"d1", "d2", "d3", "d4", "d5"}
            assert stored(state, "1234") == set()
        else:  # the add was acknowledged and recorded; the removal was made, not recorded
            assert applied == {"d1", "d3", "d5"}
            assert stored(state, "1234") == {"d1", "d2", "d3", "d4", "d5"}
        final = spawn(args, tmp_path)
        _, stderr = final.communicate(timeout=60)
        assert final.returncode == 0, stderr
        assert emu.cohort_members("1234") == stored(state, "1234") == {"d1", "d3", "d5"}
        removed = {uid for _, uids in sent(emu, "remove_members") for uid in uids}
        assert removed == {"d2", "d4"}  # nobody still in the cohort was ever removed


# -- dry run, explain, cohorts ------------------------------------------------------------------
def test_a_dry_run_shows_what_the_state_implies_and_leaves_it_untouched(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    full = write_lines(
        tmp_path / "full.jsonl", [mixpanel("members", ["d1", "d2", "d3"], session="s-1")]
    )
    assert run(cli, MIXPANEL, full, url, state).exit_code == 0
    fingerprint = hashlib.sha256(state.read_bytes()).hexdigest()
    listing = cli("cohorts", str(state), "--json").stdout
    smaller = write_lines(
        tmp_path / "smaller.jsonl",
        [
            mixpanel("members", ["d1", "d4"], session="s-2"),
            mixpanel("remove_members", ["d4"], session="s-3"),
            mixpanel("add_members", ["d4"], session="s-4"),
        ],
    )
    result = cli(
        "run",
        MIXPANEL,
        "--input",
        str(smaller),
        "--dry-run",
        "--set",
        f"destination.state={state}",
        "--set",
        f"destination.endpoint={url}",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    bodies = [json.loads(line)["body"] for line in result.stdout.splitlines()]
    assert [(b["action"], [m["uid"] for m in b["parameters"]["members"]]) for b in bodies] == [
        ("add_members", ["d4"]),
        ("remove_members", ["d2", "d3", "d4"]),
        ("add_members", ["d4"]),
    ]
    assert hashlib.sha256(state.read_bytes()).hexdigest() == fingerprint
    assert cli("cohorts", str(state), "--json").stdout == listing
    assert len(emu.received) == 1  # and nothing went on the wire
    # a dry run with no state file at all creates none
    result = cli(
        "run",
        MIXPANEL,
        "--input",
        str(smaller),
        "--dry-run",
        "--set",
        f"destination.state={tmp_path / 'none.sqlite'}",
        env=ENV,
    )
    assert result.exit_code == 0 and not (tmp_path / "none.sqlite").exists()


def test_explain_shows_the_difference_and_why(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    emu, url = emulator
    full = write_lines(
        tmp_path / "full.jsonl", [mixpanel("members", ["d1", "d2", "d3"], session="s-1")]
    )
    assert run(cli, MIXPANEL, full, url, state).exit_code == 0
    payload = tmp_path / "payload.json"
    payload.write_bytes(
        orjson.dumps(mixpanel("members", ["d1", "d4", "$device:9f"], session="s-2"))
    )
    result = cli(
        "explain",
        MIXPANEL,
        "--event",
        str(payload),
        "--set",
        f"destination.state={state}",
        "--set",
        f"destination.endpoint={url}",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "mixpanel cohort 1234 ('Power Users'): the whole membership, 3 members" in text
    assert (
        "  => nothing to send for d1 (unchanged: the destination has it so already): in "
        "the full export (full export 's-2'); the destination has it already"
    ) in text
    assert (
        "  => add d4: in the full export (full export 's-2'); the destination does not have it yet"
    ) in text
    assert "  candidate distinct_id: null  -> not usable" in text
    assert "what the state implies besides" in text
    assert (
        "  => remove d2: absent from the full export (full export 's-2'); the destination "
        "still has it"
    ) in text
    assert '"action": "remove_members"' in text
    assert emu.cohort_members("1234") == {"d1", "d2", "d3"}  # explain sends nothing


def test_cohorts_lists_what_moengage_should_contain(
    cli: CLI, emulator: tuple[MoEngageEmulator, str], state: Path, tmp_path: Path
) -> None:
    _, url = emulator
    assert (
        run(
            cli,
            MIXPANEL,
            write_lines(
                tmp_path / "m.jsonl",
                [
                    mixpanel("members", ["d1", "d2", "d3"], session="s-1"),
                    mixpanel("members", ["d9"], session="s-2", page=1, pages=2),
                ],
            ),
            url,
            state,
        ).exit_code
        == 0
    )
    assert (
        run(
            cli,
            AMPLITUDE,
            write_lines(tmp_path / "a.jsonl", [amplitude(True, ["u1"], message="m-1")]),
            url,
            state,
        ).exit_code
        == 0
    )
    result = cli("cohorts", str(state))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "destination",
        "partner",
        "cohort",
        "segment",
        "members",
        "to",
        "add",
        "to",
        "remove",
        "updated",
        "incomplete",
        "exports",
    ]
    assert [line.split()[1:5] + line.split()[6:8] for line in lines[1:]] == [
        ["amplitude", "ab12cd", "[Amplitude][Power", "Users]", "0", "0"],
        ["mixpanel", "1234", "Power", "Users", "0", "0"],
    ]
    assert lines[1].split()[5] == "1" and lines[2].split()[5] == "3"
    assert lines[2].endswith("s-2 (1 of 2 pages)")
    members = cli("cohorts", str(state), "--members", "1234")
    assert members.stdout.splitlines()[1:] == ["  d1", "  d2", "  d3"]
    assert [row.synced for row in summarise(state)] == [1, 3]
    missing = cli("cohorts", str(tmp_path / "nope.sqlite"))
    assert missing.exit_code == 2 and "no such membership state file" in missing.stderr


def test_explain_a_payload_that_is_refused(cli: CLI, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_bytes(orjson.dumps(amplitude(True, ["u1"], name="A:B", cohort="x")))
    result = cli(
        "explain",
        AMPLITUDE,
        "--event",
        str(payload),
        "--set",
        'destination.state=":memory:"',
        env=ENV,
    )
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1:5] == [
        "payload",
        "  => dead-lettered: invalid cohort name: cohort name '[Amplitude][A:B]' contains ':': "
        "MoEngage refuses a segment name that starts with '.' or contains any of | * ? \\ : < > "
        '= $ ". Rename the cohort at the partner, or set the destination setting '
        "`cohort_names: clean` to replace such characters with '_'",
        "requests",
        "  (none)",
    ]


@pytest.mark.parametrize("command", ["coverage", "diff"])
def test_record_by_record_tools_refuse_a_cohort_bundle(cli: CLI, command: str) -> None:
    example = str(EXAMPLES / "amplitude-cohort-webhooks.jsonl")
    bundles = [AMPLITUDE] * (2 if command == "diff" else 1)
    result = cli(command, *bundles, "--input", example)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"moerules: error: moerules {command} works record by "
        "record on event bundles; amplitude-cohorts-to-moengage is "
        "a cohort bundle"
    )
