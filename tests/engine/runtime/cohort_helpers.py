"""Cohort runs against the MoEngage emulator's Cohort Sync: payloads, runs, what it holds."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from moerules.connectors.emulation import MoEngageEmulator
from moerules.engine.runtime.membership import members_of

from tests.conftest import Result
from tests.engine.runtime.conftest import script

WS = "WS_COHORTS"
KEY = "cohort-sync-test-data-api-key"
ENV = {"MOENGAGE_WORKSPACE_ID": WS, "MOENGAGE_DATA_API_KEY": KEY}
MIXPANEL = "mixpanel-cohorts-to-moengage"
AMPLITUDE = "amplitude-cohorts-to-moengage"


def mixpanel(
    action: str,
    members: Iterable[str],
    *,
    session: str | None = None,
    page: int | None = None,
    pages: int | None = None,
    cohort: str = "1234",
    name: str = "Power Users",
    moengage_ids: bool = False,
) -> dict[str, Any]:
    """A Mixpanel cohort sync payload; members by distinct_id (or $moengage_user_id)."""
    key = "$moengage_user_id" if moengage_ids else "mixpanel_distinct_id"
    parameters: dict[str, Any] = {
        "mixpanel_project_id": "3210",
        "mixpanel_cohort_id": cohort,
        "mixpanel_cohort_name": name,
        "mixpanel_cohort_description": "",
        "members": [{"email": f"{m}@example.com", key: m} for m in members],
    }
    if session is not None:
        parameters["mixpanel_session_id"] = session
    if pages is not None:
        parameters["page_info"] = {"total_pages": pages, "page_count": page}
    return {"action": action, "parameters": parameters}


def amplitude(
    entering: bool,
    users: Iterable[str | None],
    *,
    message: str | None = None,
    at: int | None = None,
    cohort: str = "ab12cd",
    name: str = "Power Users",
) -> dict[str, Any]:
    """An Amplitude cohort webhook payload; a None user has no user id."""
    payload: dict[str, Any] = {
        "cohort_name": name,
        "cohort_id": cohort,
        "in_cohort": entering,
        "users": [{"user_id": u} for u in users],
    }
    if message is not None:
        payload["message_id"] = message
    if at is not None:
        payload["computed_time"] = at
    return payload


def write_lines(path: Path, payloads: Sequence[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in payloads))
    return path


def run_args(bundle: str, input_path: Path, url: str, state: Path, *extra: str) -> list[str]:
    """``moerules run`` against the emulator; the membership state in ``state``."""
    return [
        "run",
        bundle,
        "--input",
        str(input_path),
        "--state-dir",
        str(state.parent / "run"),
        "--set",
        f"destination.endpoint={url}",
        "--set",
        f"destination.state={state}",
        "--set",
        "destination.requests_per_minute=6000",
        "--quiet",
        *extra,
    ]


def run(
    cli: Callable[..., Result], bundle: str, input_path: Path, url: str, state: Path, *extra: str
) -> Result:
    return cli(*run_args(bundle, input_path, url, state, *extra), env=ENV)


def spawn(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """The installed console script, as a runner would start it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")}
    env.update(ENV)
    return subprocess.Popen(
        [script(), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stored(state: Path, cohort_id: str) -> set[str]:
    """The users the state records MoEngage acknowledged in the cohort."""
    return {uid for uids in members_of(state, cohort_id).values() for uid in uids}


def sent(emu: MoEngageEmulator, action: str | None = None) -> list[tuple[str, list[str]]]:
    """(action, uids) of every Cohort Sync request MoEngage accepted, in order."""
    out = []
    for received in emu.received:
        if received.path == "/v1/integrations/cohortsync" and received.status == 200:
            body = received.body
            if action is None or body["action"] == action:
                out.append((body["action"], [m["uid"] for m in body["parameters"]["members"]]))
    return out
