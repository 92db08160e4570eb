"""Run an emulator on a real socket: in a background thread for tests, or in the foreground
for `moerules emulate NAME`. Real HTTP is what the connectors' clients speak in production.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import orjson
import uvicorn
from moerules.connectors.emulation.base import Emulator


def _config(emulator: Emulator, host: str, port: int, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        emulator,
        host=host,
        port=port,
        http="h11",  # the injected connection reset relies on h11's behaviour
        loop="asyncio",
        lifespan="off",
        ws="none",
        log_config=None,  # leave the host's logging configuration alone
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=2,
    )


@contextmanager
def serve(
    emulator: Emulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    access_log: bool = False,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve `emulator` in a background thread; yields its base URL, e.g. http://127.0.0.1:5123.

    With port=0 the OS picks a free port. On exit the server stops and the thread is joined.
    """
    server = uvicorn.Server(_config(emulator, host, port, access_log))
    thread = threading.Thread(
        target=_run, args=(server,), name=f"emulator-{emulator.name}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            thread.join()
            raise RuntimeError(f"the {emulator.name} emulator failed to start on {host}:{port}")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(
                f"the {emulator.name} emulator did not start within {startup_timeout} s"
            )
        time.sleep(0.005)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():  # pragma: no cover - only when a handler hangs past the timeout
            server.force_exit = True
            thread.join(timeout=5)


def _run(server: uvicorn.Server) -> None:
    """uvicorn calls sys.exit() when it cannot bind; serve() reports that as a dead thread."""
    with contextlib.suppress(SystemExit):
        server.run()


def build(name: str, **options: Any) -> Emulator:
    """Instantiate the emulator registered under `name` (the ``moerules.emulators``
    entry-point group) with constructor `options`.

    Raises ValueError for an unknown name, an unknown option or a bad value.
    """
    from moerules.engine.connector import emulator_names, load_emulator

    factory = load_emulator(name)
    if factory is None:
        raise ValueError(f"unknown emulator {name!r}; choose one of {emulator_names()}")
    try:
        emulator: Emulator = factory(**options)
    except TypeError as exc:  # an unknown keyword, or a value of the wrong shape
        raise ValueError(f"{name} emulator: {exc}") from None
    return emulator


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """`NAME=VALUE` pairs as constructor options; a VALUE that parses as JSON is taken as
    JSON (numbers, null, objects), anything else as text: ``data_center=02`` is "02"."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"option {pair[:60]!r} is not NAME=VALUE")
        try:
            value: Any = orjson.loads(text)
        except orjson.JSONDecodeError:  # JSON has no leading zeros: "02" stays text
            value = text
        options[name.strip()] = value
    return options


def run_forever(
    emulator: Emulator | str,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    access_log: bool = False,
    out: TextIO | None = None,
    **options: Any,
) -> None:
    """Serve an emulator (or the one registered under that name, built with `options`)
    until Ctrl-C, after printing its URL and expected credentials."""
    stream = out if out is not None else sys.stdout
    if isinstance(emulator, str):
        emulator = build(emulator, **options)
    name = emulator.name
    with serve(emulator, host, port, access_log=access_log) as url:
        print(f"{name} emulator listening on {url}", file=stream)
        for key, value in emulator.credentials().items():
            print(f"  {key}: {value}", file=stream)
        print(f"  control: {url}/_emulator/{{received,stats,faults,reset}}", file=stream)
        print("Press Ctrl-C to stop.", file=stream, flush=True)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", file=stream)
