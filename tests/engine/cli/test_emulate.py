"""`moerules emulate`: a local partner API a user can point a bundle at."""

from __future__ import annotations

import base64
import signal
import subprocess

import httpx
import pytest

from tests.conftest import _script


def test_emulate_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [_script(), "emulate", "moengage", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("moengage emulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[-1]
        token = base64.b64encode(b"TEST_WORKSPACE:test-data-api-key").decode()
        body = {"type": "event", "customer_id": "c1", "actions": [{"action": "Opened"}]}
        ok = httpx.post(
            f"{url}/v1/event/TEST_WORKSPACE",
            json=body,
            timeout=5,
            headers={"Authorization": f"Basic {token}", "MOE-APPKEY": "TEST_WORKSPACE"},
        )
        assert ok.status_code == 200
        assert ok.json()["status"] == "success"
        denied = httpx.post(f"{url}/v1/event/TEST_WORKSPACE", json=body, timeout=5)
        assert denied.status_code == 401
        received = httpx.get(f"{url}/_emulator/received", timeout=5).json()
        assert [r["status"] for r in received] == [200, 401]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0


def test_emulate_unknown_name(cli: object) -> None:
    result = cli("emulate", "moengag")  # type: ignore[operator]
    assert result.exit_code == 2
    assert "unknown emulator 'moengag'; choose from amplitude, mixpanel, moengage, segment" in (
        result.stderr
    )


def test_emulate_takes_settings() -> None:
    """-o NAME=VALUE reaches the emulator: here a workspace in DC 02 whose bulk import takes
    one user per (shortened) minute."""
    proc = subprocess.Popen(
        [
            _script(),
            "emulate",
            "moengage",
            "--port",
            "0",
            "-o",
            "workspace_id=W2",
            "-o",
            "data_center=02",
            "-o",
            'limits={"bulk_users_per_minute": 1, "minute": 30}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        printed = [proc.stdout.readline().strip() for _ in range(3)]
        assert printed == [
            "auth: Basic W2:test-data-api-key",
            "MOE-APPKEY: W2",
            "data_center: 02 (api-02.moengage.com)",
        ]
        token = base64.b64encode(b"W2:test-data-api-key").decode()
        body = {
            "type": "transition",
            "elements": [{"type": "customer", "customer_id": "c1", "attributes": {}}],
        }
        statuses = [
            httpx.post(
                f"{url}/v1/transition/W2",
                json=body,
                timeout=5,
                headers={"Authorization": f"Basic {token}"},
            ).status_code
            for _ in range(2)
        ]
        assert statuses == [200, 429]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("colour=red", "moengage emulator: "),
        ("data_center=07", "data_center must be one of 01, 02, 03, 04, 05, 06, 101"),
        ("max_body_bytes=0", "max_body_bytes must be an integer within [1, 67108864], got 0"),
        (
            'faults={"script": [{"kind": "503", "count": 100000000}]}',
            "count must be an integer within [1, 1000000], got 100000000",
        ),
        ("limits=[1]", "moengage emulator: "),
        ("nonsense", "option 'nonsense' is not NAME=VALUE"),
    ],
)
def test_emulate_refuses_bad_settings(cli: object, option: str, message: str) -> None:
    result = cli("emulate", "moengage", "-o", option)  # type: ignore[operator]
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
