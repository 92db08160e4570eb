"""`moerules emulate`: a local partner API a user can point a bundle at."""

from __future__ import annotations

import base64
import signal
import subprocess

import httpx

from tests.conftest import _script


def test_emulate_serves_until_interrupted() -> None:
    proc = subprocess.Popen([_script(), "emulate", "moengage", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("moengage emulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[-1]
        token = base64.b64encode(b"TEST_WORKSPACE:test-data-api-key").decode()
        body = {"type": "event", "customer_id": "c1", "actions": [{"action": "Opened"}]}
        ok = httpx.post(f"{url}/v1/event/TEST_WORKSPACE", json=body, timeout=5,
                        headers={"Authorization": f"Basic {token}",
                                 "MOE-APPKEY": "TEST_WORKSPACE"})
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
        result.stderr)

