"""Amplitude's cohort webhook behind ``moerules serve``, through a crash: what was answered
202 reaches MoEngage's cohort after a ``kill -9`` and a restart, a repeated webhook changes
nothing, and the membership state records what MoEngage acknowledged. (Mixpanel's cohort
sync behind the service: tests/engine/service/test_cohorts_served.py.)"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from moerules.connectors.emulation import Fault, MoEngageEmulator

from tests.engine.runtime.cohort_helpers import amplitude, sent, stored
from tests.engine.service.conftest import ServiceProcess, endpoint, wait_until

BUNDLE = "amplitude-cohorts-to-moengage"
AUTH = ("amplitude", "cohort-webhook-secret")
ENV = {"MOERULES_AUTH_AMPLITUDE_COHORTS_TO_MOENGAGE_BASIC": ":".join(AUTH)}
DEPTH = f'moerules_spool_depth{{bundle="{BUNDLE}"}}'


def test_amplitude_cohort_webhooks_survive_kill_9(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    emu, url = emulator
    state = tmp_path / "cohorts.sqlite"
    args = (
        "--set",
        endpoint(url),
        "--set",
        f"destination.state={state}",
        "--set",
        "destination.requests_per_minute=6000",
    )
    emu.faults.push(Fault("503"), count=100_000)  # MoEngage is down: nothing is applied yet
    first = start_service(
        *args, "--backoff-base", "60", "--backoff-cap", "60", bundle=BUNDLE, env=ENV
    )
    entered = amplitude(
        True, ["user-0001", "user-0002", "user-0003"], message="m-1", at=1_718_000_000
    )
    for _ in range(2):  # Amplitude retried: the same message twice
        assert first.post(entered, bundle=BUNDLE, auth=AUTH).status_code == 202
    assert wait_until(lambda: emu.stats()["by_status"].get("503", 0) >= 1, timeout=30)
    first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert sent(emu) == [] and stored(state, "ab12cd") == set()

    emu.faults.clear()
    second = start_service(*args, bundle=BUNDLE, env=ENV)
    # the first webhook at least (its repeat may have been settled as a repeat already)
    assert 1 <= second.wait_event("spool recovered")["messages"] <= 2
    members = {"user-0001", "user-0002", "user-0003"}
    assert wait_until(lambda: emu.cohort_members("ab12cd") == members, timeout=30)
    left = amplitude(False, ["user-0002"], message="m-2", at=1_718_003_600)
    assert second.post(left, bundle=BUNDLE, auth=AUTH).status_code == 202
    assert wait_until(lambda: emu.cohort_members("ab12cd") == members - {"user-0002"}, timeout=30)
    assert wait_until(lambda: second.metrics()[DEPTH] == 0)
    assert stored(state, "ab12cd") == members - {"user-0002"}
    assert [(action, set(uids)) for action, uids in sent(emu)] == [
        ("add_members", members),
        ("remove_members", {"user-0002"}),
    ]
    bad = second.post({"cohort_id": "x", "users": "nobody"}, bundle=BUNDLE, auth=AUTH)
    assert bad.status_code == 400
