"""How close a real run gets to a partner's rate limit without meeting a 429.

    python -m moerules.benchmarks.delivery_rate [--rate 200] [--seconds 10] [--concurrency 8]

Starts the MoEngage emulator in its own process (``moerules emulate``, so the two do not share
a GIL) with a sliding-window limit of ``--rate`` requests/s, delivers generated mParticle
batches with the same limit set on the sink, and prints the request rate the emulator saw as a
fraction of the limit, and the 429s met. Target: >= 95 % of the limit and no 429 at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from moerules.benchmarks.generate import write_jsonl
from moerules.engine.api import load_bundle
from moerules.engine.runtime.delivery import DeliveryOptions, deliver

WORKSPACE, KEY = "TEST_WORKSPACE", "test-data-api-key"  # the emulator's defaults
REQUEST_BYTES = 2048  # small requests: this measures pacing, not bandwidth
LINES_PER_REQUEST = 2.5  # what the generated batches average at that size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    script = shutil.which("moerules", path=str(Path(sys.executable).parent)) or "moerules"
    process = subprocess.Popen(
        [script, "emulate", "moengage", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_emulator/stats", timeout=1).raise_for_status()
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the emulator did not start")


def measure(rate: int, seconds: float, concurrency: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = start_emulator(port)
    try:
        httpx.post(
            f"{url}/_emulator/faults", json={"rate_limit": {"per_second": rate}}
        ).raise_for_status()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "in.jsonl"
            write_jsonl(data, int(rate * seconds * LINES_PER_REQUEST))
            compiled = load_bundle(
                "mparticle-to-moengage",
                [
                    f"destination.endpoint={url}",
                    f"destination.requests_per_second={rate}",
                    f"destination.requests_per_minute={rate * 120}",
                    f"destination.max_request_bytes={REQUEST_BYTES}",
                ],
                env={"MOENGAGE_WORKSPACE_ID": WORKSPACE, "MOENGAGE_DATA_API_KEY": KEY},
            )
            report = deliver(
                compiled,
                str(data),
                state_dir=Path(tmp) / "state",
                quiet=True,
                options=DeliveryOptions(concurrency=concurrency),
            )
        stats = httpx.get(f"{url}/_emulator/stats").json()
        arrivals = sorted(r["at"] for r in httpx.get(f"{url}/_emulator/received").json())
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    # the first second holds the small burst the limiter allows; measure the steady pace after
    steady = [a for a in arrivals if a >= arrivals[0] + 1.0]
    sustained = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    busiest = max((sum(1 for b in arrivals if a - 1.0 < b <= a) for a in arrivals), default=0)
    return {
        "limit": rate,
        "requests": report.requests,
        "elapsed": report.elapsed_seconds,
        "sustained": sustained,
        "fraction": sustained / rate,
        "busiest_second": busiest,
        "throttled_client": report.throttled,
        "rate_limited_emulator": stats["rate_limited"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=200, help="the limit, requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="about how long to run")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ.pop("MOENGAGE_DATA_API_KEY", None)
    result = measure(args.rate, args.seconds, args.concurrency)
    print(f"limit            {result['limit']} requests/s")
    print(f"requests         {result['requests']} in {result['elapsed']:.1f} s")
    print(f"sustained rate   {result['sustained']:.1f}/s = {result['fraction']:.1%} of the limit")
    print(f"busiest second   {result['busiest_second']} requests (emulator's sliding window)")
    print(
        f"429s met         {result['throttled_client']} "
        f"(emulator refused {result['rate_limited_emulator']})"
    )
    ok = result["fraction"] >= 0.95 and result["throttled_client"] == 0
    print("target (>= 95 % of the limit, no 429):", "met" if ok else "NOT met")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
