"""Hot reload (a changed rule file, SIGHUP): only a valid bundle is swapped in; metrics count
what happened; the log has one JSON line per request and per delivery batch, no secrets."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from moerules.connectors.emulation import MoEngageEmulator

from tests.engine.runtime.conftest import KEY
from tests.engine.service.conftest import (
    AUTH,
    BUNDLE,
    PASSWORD,
    ServiceProcess,
    accepted_ids,
    endpoint,
    payloads,
    wait_until,
)

OVERLAY = """
extends: mparticle-to-moengage
bundle: reload-test
events:
  - name: custom-event
    event_name: "{name}"
"""
AUTH_ENV = {"MOERULES_AUTH_RELOAD_TEST_BASIC": f"x:{PASSWORD}"}


def event_names(emu: MoEngageEmulator) -> list[str]:
    names = []
    for received in emu.received:
        if received.status != 200:
            continue
        for element in received.body["elements"]:
            names += [action["action"] for action in element.get("actions", [])]
    return names


def write_overlay(path: Path, name: str) -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(OVERLAY).format(name=name), encoding="utf-8")
    while path.stat().st_mtime_ns == before:  # a coarse clock: make the change visible
        time.sleep(0.01)
        path.write_text(textwrap.dedent(OVERLAY).format(name=name), encoding="utf-8")


def post_and_wait(service: ServiceProcess, emu: MoEngageEmulator, number: int) -> list[str]:
    """Post payload ``number``; the names its events were delivered with."""
    assert (
        service.post(
            payloads(number, number)[0], bundle="reload-test", auth=("x", PASSWORD)
        ).status_code
        == 202
    )
    assert wait_until(lambda: f"event:{number}-1" in accepted_ids(emu), timeout=20)
    return event_names(emu)[-2:]


def test_a_broken_rule_file_keeps_the_old_rules_serving(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    emu, url = emulator
    rules = tmp_path / "rules" / "bundle.yaml"
    rules.parent.mkdir()
    write_overlay(rules, "v1 {{ event.data.event_name }}")
    service = start_service(
        "--set",
        endpoint(url),
        "--watch-interval",
        "0.1",
        "--set",
        "destination.max_request_bytes=1024",
        bundle=str(rules),
        env=AUTH_ENV,
    )
    assert post_and_wait(service, emu, 1) == ["v1 Tested", "v1 Tested"]

    seen = len(service.events)
    write_overlay(rules, "v2 {{ event.data.event_name")  # the template does not parse
    rejected = service.wait_event("reload rejected", after=seen)
    assert rejected["trigger"] == "file changed"
    assert rejected["note"] == "the previous version keeps serving"
    assert any(p.startswith(f"{rules}:6:") and "error" in p for p in rejected["problems"]), (
        rejected["problems"]
    )
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert post_and_wait(service, emu, 2) == ["v1 Tested", "v1 Tested"]

    seen = len(service.events)
    write_overlay(rules, "v3 {{ event.data.event_name }}")
    assert service.wait_event("reloaded", after=seen)["bundle"] == "reload-test"
    assert post_and_wait(service, emu, 3) == ["v3 Tested", "v3 Tested"]
    metrics = service.metrics()
    assert metrics['moerules_reloads_total{bundle="reload-test",result="rejected"}'] == 1
    assert metrics['moerules_reloads_total{bundle="reload-test",result="applied"}'] == 1


def test_sighup_reloads_and_a_renamed_bundle_is_refused(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    emu, url = emulator
    rules = tmp_path / "overlay.yaml"
    write_overlay(rules, "v1 {{ event.data.event_name }}")
    service = start_service(
        "--set", endpoint(url), "--watch-interval", "0", bundle=str(rules), env=AUTH_ENV
    )
    write_overlay(rules, "v2 {{ event.data.event_name }}")
    time.sleep(0.3)  # not watched: nothing happens until the signal
    assert not any(e["event"].startswith("reload") for e in service.events)
    seen = len(service.events)
    service.signal(signal.SIGHUP)
    assert service.wait_event("reloaded", after=seen)["trigger"] == "SIGHUP"
    assert post_and_wait(service, emu, 1) == ["v2 Tested", "v2 Tested"]

    rules.write_text(rules.read_text().replace("bundle: reload-test", "bundle: renamed"))
    seen = len(service.events)
    service.signal(signal.SIGHUP)
    rejected = service.wait_event("reload rejected", after=seen)
    assert "restart the service to rename it" in rejected["problems"][0]
    assert post_and_wait(service, emu, 2) == ["v2 Tested", "v2 Tested"]


def test_metrics_count_what_happened(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    emu, url = emulator
    service = start_service("--set", endpoint(url))
    good = payloads(1, 3)
    dropped: dict[str, Any] = payloads(4, 4)[0]
    dropped["events"][0]["data"]["custom_event_type"] = "attribution"  # a drop rule
    no_identity: dict[str, Any] = payloads(5, 5)[0]
    del no_identity["user_identities"]  # the events and the user update: dead letters
    for payload in [*good, dropped, no_identity]:
        assert service.post(payload).status_code == 202
    assert service.post({}, auth=None).status_code == 401
    assert service.post([], auth=AUTH).status_code == 400
    assert wait_until(
        lambda: service.metrics().get(f'moerules_spool_acked_total{{bundle="{BUNDLE}"}}') == 5,
        timeout=20,
    )
    m = service.metrics()
    requests = 'moerules_ingest_requests_total{bundle="%s",partner="mparticle",status="%s"}'
    assert m[requests % (BUNDLE, "202")] == 5
    assert m[requests % (BUNDLE, "401")] == 1
    assert m[requests % (BUNDLE, "400")] == 1
    assert m[f'moerules_ingest_request_seconds_count{{bundle="{BUNDLE}"}}'] == 7
    records = 'moerules_records_total{bundle="%s",outcome="%s",reason="%s"}'
    assert m[records % (BUNDLE, "delivered", "event")] == 7  # 3 × 2 + 1 of the dropped batch
    assert m[records % (BUNDLE, "delivered", "user")] == 4
    assert m[records % (BUNDLE, "dropped", "not supported by the MoEngage integration")] == 1
    # the batch without identities: its 2 events and its user update
    assert m[records % (BUNDLE, "dead_lettered", "no usable identity")] == 3
    assert m[f'moerules_dead_letters_total{{bundle="{BUNDLE}",reason="no usable identity"}}'] == 3
    sent = sum(v for k, v in m.items() if k.startswith("moerules_delivery_requests_total"))
    assert (
        sent
        == len(emu.received)
        == m[f'moerules_delivery_requests_total{{bundle="{BUNDLE}",status="200"}}']
    )
    assert m[f'moerules_spool_depth{{bundle="{BUNDLE}"}}'] == 0
    assert m[f'moerules_delivery_up{{bundle="{BUNDLE}"}}'] == 1
    assert m["moerules_ready"] == 1
    assert set(accepted_ids(emu)) >= {"user:c-1", "event:1-0", "event:4-1"}

    # the log: one line per request, one per delivery batch, and no secret anywhere
    requests_logged = [e for e in service.events if e["event"] == "request"]
    assert [e["status"] for e in requests_logged] == [202] * 5 + [401, 400]
    batches = [e for e in service.events if e["event"] == "delivery"]
    assert len(batches) == len(emu.received)
    assert all(e["status"] == 200 and e["verdict"] == "delivered" for e in batches)
    assert sum(e["items"] for e in batches) == 11
    log = service.log_text()
    assert KEY not in log and PASSWORD not in log
    letters = (tmp_path / "state" / "dead-letters" / f"{BUNDLE}.jsonl").read_text().splitlines()
    assert len(letters) == 3
