"""Any delivery order gives the same result (property tests over the dry run).

The requests a dry run shows, applied in order to an empty segment, must leave it holding the
partner's latest membership, however the payloads arrived: shuffled, repeated, pages out of
order. (The real runs over HTTP are in test_cohort_runs.py; a dry run uses the same feed.)
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moerules.engine.api import dry_run, load_bundle

from tests.engine.runtime.cohort_helpers import AMPLITUDE, ENV, MIXPANEL, amplitude, mixpanel

USERS = [f"u{n}" for n in range(6)]
MEMORY = ['destination.state=":memory:"']


def applied(bundle: str, payloads: list[dict[str, Any]]) -> tuple[dict[str, set[str]], Any]:
    """The segments the dry run's requests leave, by cohort id, and the report."""
    compiled = load_bundle(bundle, MEMORY, env=ENV)
    out = io.BytesIO()
    report = dry_run(compiled, [(n, orjson.dumps(p)) for n, p in enumerate(payloads, 1)], out)
    segments: dict[str, set[str]] = {}
    for line in out.getvalue().splitlines():
        body = orjson.loads(line)["body"]
        params = body["parameters"]
        uids = {m["uid"] for m in params["members"]}
        segment = segments.setdefault(params["cohort_id"], set())
        if body["action"] == "add_members":
            segment |= uids
        else:
            segment -= uids
    return segments, report


# -- Amplitude: words ordered by computed_time ---------------------------------------------------
words = st.lists(st.tuples(st.sampled_from(USERS), st.booleans()), min_size=1, max_size=25)


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    words=words,
    order=st.randoms(use_true_random=False),
    repeats=st.lists(st.integers(min_value=0, max_value=24), max_size=10),
)
def test_amplitude_any_order_ends_at_the_latest_word(
    words: list[tuple[str, bool]], order: Any, repeats: list[int]
) -> None:
    payloads = [
        amplitude(entering, [user], message=f"m-{n}", at=1_718_000_000 + n)
        for n, (user, entering) in enumerate(words)
    ]
    arrived = list(payloads)
    order.shuffle(arrived)
    arrived += [payloads[i] for i in repeats if i < len(payloads)]  # repeats, late
    latest: dict[str, bool] = {}
    for user, entering in words:
        latest[user] = entering
    segments, report = applied(AMPLITUDE, arrived)
    assert segments.get("ab12cd", set()) == {u for u, inside in latest.items() if inside}
    assert report.balanced()


# -- Mixpanel: syncs in sequence, pages shuffled and repeated ------------------------------------
sync = st.one_of(
    st.tuples(
        st.just("members"), st.sets(st.sampled_from(USERS)), st.integers(min_value=1, max_value=3)
    ),
    st.tuples(
        st.sampled_from(["add_members", "remove_members"]),
        st.sets(st.sampled_from(USERS), min_size=1),
        st.just(1),
    ),
)


@settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    syncs=st.lists(sync, min_size=1, max_size=6),
    order=st.randoms(use_true_random=False),
    repeats=st.lists(st.integers(min_value=0, max_value=20), max_size=6),
)
def test_mixpanel_exports_replace_and_pages_may_come_in_any_order(
    syncs: list[tuple[str, set[str], int]], order: Any, repeats: list[int]
) -> None:
    """Syncs follow one another (a sync is older than one whose first page arrived later);
    the pages of an export come in any order, some of them after later syncs' pages, and
    any page may come again later."""
    expected: set[str] = set()
    later: dict[int, list[dict[str, Any]]] = {}  # session -> pages delayed until after it
    arrived: list[dict[str, Any]] = []
    for n, (action, users, pages) in enumerate(syncs):
        members = sorted(users)
        if action == "members":
            expected = set(members)
            sent = [
                mixpanel(action, members[i::pages], session=f"s-{n}", page=i + 1, pages=pages)
                for i in range(pages)
            ]
        else:
            expected = expected | users if action == "add_members" else expected - users
            sent = [mixpanel(action, members, session=f"s-{n}")]
        order.shuffle(sent)
        arrived.append(sent[0])  # the sync starts when its first page arrives
        for page in sent[1:]:
            later.setdefault(n + order.randint(0, 2), []).append(page)
        arrived += later.pop(n, [])
    arrived += [page for n in sorted(later) for page in later[n]]
    arrived += [arrived[i] for i in repeats if i < len(arrived)]  # repeats, late
    segments, report = applied(MIXPANEL, arrived)
    assert segments.get("1234", set()) == expected
    assert report.balanced()
    assert not any("incomplete" in warning for warning in report.warnings)
