"""Load benchmark of ``moerules serve``: payloads acknowledged per second and the latency of
each acknowledgement, beside a bare endpoint, measured in one run.

    python -m moerules.benchmarks.service_load [--seconds 10] [--connections 16]

Three processes besides this one, all on 127.0.0.1:

- the **bare** endpoint: a starlette app on uvicorn whose one route writes the body to the
  same ``SqliteSpool`` and answers 202: the floor of what durable acknowledgement costs here;
- **moerules serve** with the shipped mParticle bundle (auth, type, size and shape checks,
  back-pressure, metrics, one log line per request, and delivery from the spool to a MoEngage
  emulator running at the same time);
- the **load** generator: keep-alive connections posting generated mParticle batches as fast
  as the answers come, for a fixed time after a warm-up.

It prints payloads/s accepted, p50/p99 acknowledgement latency of each, and the ratio. Figures
depend on the machine; tests never assert them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

PASSWORD = "bench-ingest-password"
ENV = {
    "MOENGAGE_WORKSPACE_ID": "BENCH_WS",
    "MOENGAGE_DATA_API_KEY": "bench-data-api-key",
    "MOERULES_AUTH_MPARTICLE_TO_MOENGAGE_BASIC": f"bench:{PASSWORD}",
}
BUNDLE = "mparticle-to-moengage"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


# -- the bare endpoint -----------------------------------------------------------------------
def bare_server(port: int, state_dir: Path) -> None:
    """A starlette route that only stores the body in the spool (the comparison's floor)."""
    import uvicorn
    from moerules.engine.service.spool import SqliteSpool
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    spool = SqliteSpool(state_dir)

    async def ingest(request: Request) -> Response:
        body = await request.body()
        stored = await spool.put("bare", body)
        return Response(
            orjson.dumps({"status": "accepted", "id": stored}),
            status_code=202,
            media_type="application/json",
        )

    async def healthz(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    async def main() -> None:
        spool.open()
        app = Starlette(
            routes=[Route("/ingest/bare", ingest, methods=["POST"]), Route("/healthz", healthz)]
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="off",
                log_config=None,
                access_log=False,
                ws="none",
            )
        )
        await server.serve()
        await spool.close()

    asyncio.run(main())


# -- the load generator ----------------------------------------------------------------------
async def _load(
    port: int,
    path: str,
    authorization: str,
    bodies: list[bytes],
    seconds: float,
    warmup: float,
    connections: int,
) -> dict[str, Any]:
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + seconds
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while (now := time.perf_counter()) < deadline:
                body = bodies[i % len(bodies)]
                i += connections
                writer.write(
                    b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % (path.encode(), authorization.encode(), len(body))
                    + body
                )
                sent = now
                status = int((await reader.readline()).split()[1])
                length = 0
                close = False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and "close" in value.lower():
                        close = True
                await reader.readexactly(length)
                done = time.perf_counter()
                if sent >= measure_from:
                    latencies.append(done - sent)
                    statuses[status] += 1
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    latencies.sort()
    accepted = statuses.get(202, 0)

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0
        )

    return {
        "accepted": accepted,
        "per_second": accepted / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def load(
    port: int,
    path: str,
    authorization: str,
    payload_file: Path,
    seconds: float,
    warmup: float,
    connections: int,
) -> None:
    bodies = payload_file.read_bytes().splitlines()
    result = asyncio.run(_load(port, path, authorization, bodies, seconds, warmup, connections))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


def _run_load(
    port: int, path: str, authorization: str, payload_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The load generator in a second process (it must not share this one's CPU time)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "moerules.benchmarks.service_load",
            "--load",
            str(port),
            path,
            authorization,
            str(payload_file),
            str(args.seconds),
            str(args.warmup),
            str(args.connections),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=args.seconds + args.warmup + 120,
    )
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _moerules() -> list[str]:
    return [sys.executable, "-m", "moerules.engine.cli.main"]


def run(args: argparse.Namespace) -> int:
    from moerules.benchmarks.generate import batches

    env = {**os.environ, **ENV}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        payload_file = work / "payloads.jsonl"
        payload_file.write_bytes(
            b"".join(orjson.dumps(b) + b"\n" for b in batches(args.payloads, seed=7))
        )
        sizes = [len(line) for line in payload_file.read_bytes().splitlines()]
        emu_port, bare_port, serve_port = _free_port(), _free_port(), _free_port()
        emulator = subprocess.Popen(
            [
                *_moerules(),
                "emulate",
                "moengage",
                "--port",
                str(emu_port),
                "-o",
                "workspace_id=BENCH_WS",
                "-o",
                "data_api_key=bench-data-api-key",
                "-o",
                "max_received=1000",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        results: dict[str, dict[str, Any]] = {}
        try:
            _wait_http(emu_port, "/_emulator/stats")
            bare = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "moerules.benchmarks.service_load",
                    "--bare",
                    str(bare_port),
                    str(work / "bare"),
                ],
                env=env,
            )
            try:
                _wait_http(bare_port, "/healthz")
                results["bare starlette + spool"] = _run_load(
                    bare_port, "/ingest/bare", "none", payload_file, args
                )
            finally:
                _stop(bare)
            log = (work / "serve.log").open("wb")
            service = subprocess.Popen(
                [
                    *_moerules(),
                    "serve",
                    BUNDLE,
                    "--port",
                    str(serve_port),
                    "--state-dir",
                    str(work / "serve"),
                    "--set",
                    f"destination.endpoint=http://127.0.0.1:{emu_port}",
                    "--log-format",
                    "json",
                ],
                env=env,
                stderr=log,
            )
            try:
                _wait_http(serve_port, "/readyz")
                basic = base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
                results["moerules serve"] = _run_load(
                    serve_port, f"/ingest/{BUNDLE}", f"Basic {basic}", payload_file, args
                )
            finally:
                _stop(service)
                log.close()
        finally:
            _stop(emulator)
    print(
        f"service load: {args.connections} connections, {args.seconds:g} s measured after "
        f"{args.warmup:g} s warm-up, {args.payloads} mParticle batches "
        f"({min(sizes)}-{max(sizes)} bytes, mean {sum(sizes) // len(sizes)}), "
        f"{os.cpu_count()} CPUs, loopback"
    )
    print(f"{'endpoint':<26}{'payloads/s':>12}{'p50 ms':>10}{'p99 ms':>10}  statuses")
    for name, r in results.items():
        print(
            f"{name:<26}{r['per_second']:>12.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}  "
            f"{r['statuses']}"
        )
    bare_rate = results["bare starlette + spool"]["per_second"]
    serve_rate = results["moerules serve"]["per_second"]
    if bare_rate:
        print(f"moerules serve / bare: {serve_rate / bare_rate:.2f} of the throughput")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--bare":
        bare_server(int(argv[1]), Path(argv[2]))
        return 0
    if argv and argv[0] == "--load":
        port, path, auth, file, seconds, warmup, connections = argv[1:8]
        load(int(port), path, auth, Path(file), float(seconds), float(warmup), int(connections))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m moerules.benchmarks.service_load",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start")
    parser.add_argument("--connections", type=int, default=16, help="concurrent posters")
    parser.add_argument("--payloads", type=int, default=2000, help="distinct payloads cycled")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
