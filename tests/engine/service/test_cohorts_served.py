"""``moerules serve`` with a cohort bundle: Mixpanel pushes its cohort sync payloads, MoEngage
ends with the cohort, and the membership state records what MoEngage acknowledged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moerules.connectors.emulation import MoEngageEmulator

from tests.engine.runtime.cohort_helpers import mixpanel, sent, stored
from tests.engine.service.conftest import ServiceProcess, endpoint, wait_until

BUNDLE = "mixpanel-cohorts-to-moengage"
AUTH = ("mixpanel", "cohort-webhook-password")


def test_served_cohort_payloads_sync_the_segment(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    emu, url = emulator
    state = tmp_path / "cohorts.sqlite"
    service = start_service(
        "--set",
        endpoint(url),
        "--set",
        f"destination.state={state}",
        "--set",
        "destination.requests_per_minute=6000",
        bundle=BUNDLE,
        env={"MOERULES_AUTH_MIXPANEL_COHORTS_TO_MOENGAGE_BASIC": ":".join(AUTH)},
    )
    pages = [
        mixpanel("members", ["d3", "d4"], session="s-1", page=2, pages=2),
        mixpanel("members", ["d1", "d2"], session="s-1", page=1, pages=2),
    ]
    for payload in pages:
        assert service.post(payload, bundle=BUNDLE, auth=AUTH).status_code == 202
    assert wait_until(lambda: emu.cohort_members("1234") == {"d1", "d2", "d3", "d4"})
    smaller = mixpanel("members", ["d1", "d3"], session="s-2")
    assert service.post(smaller, bundle=BUNDLE, auth=AUTH).status_code == 202
    assert service.post(smaller, bundle=BUNDLE, auth=AUTH).status_code == 202  # a retry
    assert wait_until(lambda: emu.cohort_members("1234") == {"d1", "d3"})
    assert wait_until(lambda: stored(state, "1234") == {"d1", "d3"})
    assert sent(emu) == [
        ("add_members", ["d1", "d2", "d3", "d4"]),
        ("remove_members", ["d2", "d4"]),
    ]
    bad = service.post({"action": "members"}, bundle=BUNDLE, auth=AUTH)
    assert bad.status_code == 400  # not a cohort payload: refused before it is stored
    assert "parameters is not an object" in bad.text
