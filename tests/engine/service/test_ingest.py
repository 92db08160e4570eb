"""POST /ingest/{bundle}: who may post, what is refused before anything is stored, and what
is stored (answered 202 only once it is in the spool)."""

from __future__ import annotations

import base64
import gzip
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from moerules.connectors.emulation import MoEngageEmulator

from tests.engine.service.conftest import (
    AUTH,
    BUNDLE,
    JSON,
    PASSWORD,
    USER,
    ServiceProcess,
    accepted_ids,
    endpoint,
    payloads,
    wait_until,
)

LIMIT = 2048  # --max-body-bytes


@pytest.fixture
def service(
    start_service: Callable[..., ServiceProcess], emulator: tuple[MoEngageEmulator, str]
) -> Iterator[ServiceProcess]:
    _, url = emulator
    yield start_service("--set", endpoint(url), "--max-body-bytes", str(LIMIT))


def refused(response: httpx.Response, status: int, error: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    assert body["error"] == error
    return body


def nothing_stored(service: ServiceProcess) -> None:
    metrics = service.metrics()
    assert metrics[f'moerules_spool_depth{{bundle="{BUNDLE}"}}'] == 0
    assert not any(key.startswith("moerules_records_total") for key in metrics)
    assert not any(e["event"] == "request" and e["status"] == 202 for e in service.events)


# -- authentication --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "auth, headers",
    [
        (None, JSON),  # no credentials at all
        ((USER, "wrong-password"), JSON),
        (("someone-else", PASSWORD), JSON),
        (None, {**JSON, "Authorization": "Bearer " + PASSWORD}),  # right secret, wrong scheme
        (None, {**JSON, "Authorization": "Basic !!!not-base64"}),
        (
            None,
            {
                **JSON,
                "Authorization": "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),
            },
        ),  # no colon
    ],
    ids=["none", "wrong-password", "wrong-user", "bearer-for-basic", "garbage", "no-colon"],
)
def test_each_auth_failure_is_401_and_nothing_is_read(
    service: ServiceProcess, auth: object, headers: dict[str, str]
) -> None:
    body = refused(
        service.post(payloads(1, 1)[0], auth=auth, headers=headers), 401, "unauthenticated"
    )
    assert PASSWORD not in str(body)
    response = service.post({}, auth=auth, headers=headers)
    assert response.headers["www-authenticate"] == 'Basic realm="moerules"'
    nothing_stored(service)
    assert PASSWORD not in service.log_text()


def test_bearer_and_static_header_routes(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    _, url = emulator
    token, header_secret = "bearer-token-7781", "header-secret-9910"
    service = start_service(
        "--set",
        endpoint(url),
        env={
            "MOERULES_AUTH_MPARTICLE_TO_MOENGAGE_BASIC": "",
            "MOERULES_AUTH_MPARTICLE_TO_MOENGAGE_BEARER": token,
            "MOERULES_AUTH_MPARTICLE_TO_MOENGAGE_HEADER": f"X-Moe-Secret: {header_secret}",
        },
    )
    payload = payloads(1, 1)[0]
    ok = service.post(payload, auth=None, headers={**JSON, "Authorization": f"Bearer {token}"})
    assert ok.status_code == 202, ok.text
    ok = service.post(payload, auth=None, headers={**JSON, "X-Moe-Secret": header_secret})
    assert ok.status_code == 202, ok.text
    for headers in (
        {**JSON, "Authorization": f"Bearer {token}x"},
        {**JSON, "Authorization": f"Bearer {token[:-1]}"},
        {**JSON, "X-Moe-Secret": header_secret.upper()},
        {**JSON, "X-Other": header_secret},
        {**JSON, "Authorization": "Basic " + base64.b64encode(f"x:{token}".encode()).decode()},
    ):
        response = service.post(payload, auth=None, headers=headers)
        refused(response, 401, "unauthenticated")
        assert "www-authenticate" not in response.headers  # no Basic on this route
    log = service.log_text()
    assert token not in log and header_secret not in log


def test_a_route_without_credentials_does_not_start(
    moerules: Callable[..., object], tmp_path: Path
) -> None:
    from tests.engine.service.conftest import ENV

    env = {k: v for k, v in ENV.items() if not k.startswith("MOERULES_AUTH")}
    result = moerules("serve", BUNDLE, "--port", "0", "--state-dir", str(tmp_path / "s"), env=env)
    assert result.returncode == 2  # type: ignore[attr-defined]
    assert "MOERULES_AUTH_MPARTICLE_TO_MOENGAGE_BASIC" in result.stderr  # type: ignore[attr-defined]


# -- size, type, shape -----------------------------------------------------------------------
def test_declared_oversize_is_refused_before_the_body_is_sent(service: ServiceProcess) -> None:
    host, port = service.url.removeprefix("http://").split(":")
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        # headers only: the answer must come although not one byte of the body follows
        conn.sendall(
            (
                f"POST /ingest/{BUNDLE} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                f"{auth}\r\nContent-Type: application/json\r\nContent-Length: "
                "1000000000\r\n\r\n"
            ).encode()
        )
        started = time.monotonic()
        answer = _read_answer(conn)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert time.monotonic() - started < 5
    assert '"payload too large"' in answer and "1000000000 bytes declared" in answer
    nothing_stored(service)


def _read_answer(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(4096)
    return (head + b"\r\n\r\n" + body).decode()


def test_streamed_oversize_is_cut_at_the_limit(service: ServiceProcess) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse on
        nonlocal sent
        yield b'{"events": ['
        for _ in range(10_000):
            sent += 1
            yield b'{"event_type": "custom_event"},'

    response = httpx.post(service.route(), content=chunks(), auth=AUTH, headers=JSON, timeout=30)
    body = refused(response, 413, "payload too large")
    assert body["detail"] == f"more than {LIMIT} bytes"
    nothing_stored(service)


def test_gzip_is_measured_decompressed(service: ServiceProcess) -> None:
    big = orjson.dumps({"environment": "production", "events": [], "pad": "x" * (LIMIT * 4)})
    response = service.post(
        None, content=gzip.compress(big), headers={**JSON, "Content-Encoding": "gzip"}
    )
    refused(response, 413, "payload too large")
    small = orjson.dumps(payloads(1, 1)[0])
    response = service.post(
        None, content=gzip.compress(small), headers={**JSON, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 202, response.text
    response = service.post(None, content=b"not gzip", headers={**JSON, "Content-Encoding": "gzip"})
    refused(response, 400, "malformed gzip body")


@pytest.mark.parametrize(
    "headers, detail",
    [
        ({"Content-Type": "text/plain"}, "send Content-Type: application/json, not 'text/plain'"),
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            "send Content-Type: application/json, not 'application/x-www-form-urlencoded'",
        ),
        ({}, "send Content-Type: application/json"),
        ({**JSON, "Content-Encoding": "br"}, "'br': send the body plain or gzip"),
    ],
    ids=["text", "form", "none", "brotli"],
)
def test_wrong_content_type_is_415(
    service: ServiceProcess, headers: dict[str, str], detail: str
) -> None:
    response = service.post(payloads(1, 1)[0], headers=headers)
    error = (
        "unsupported content encoding"
        if "Content-Encoding" in headers
        else "unsupported media type"
    )
    assert refused(response, 415, error)["detail"] == detail
    nothing_stored(service)


@pytest.mark.parametrize(
    "content, error, detail",
    [
        (b'{"events": [', "malformed JSON", "unexpected end of data: line 1 column 13 (char 12)"),
        (b"[1, 2]", "payload is not a JSON object", "got a JSON list"),
        (b'"a string"', "payload is not a JSON object", "got a JSON str"),
        (b'{"events": {"a": 1}}', "batch.events is not a list", "got dict"),
        (b"   ", "empty body", "the payload is one JSON object"),
        (b"\xff\xfe{}", "malformed JSON", None),
    ],
    ids=["truncated", "array", "string", "events-object", "blank", "not-utf8"],
)
def test_malformed_and_wrong_shape_bodies_are_400(
    service: ServiceProcess, content: bytes, error: str, detail: str | None
) -> None:
    body = refused(service.post(None, content=content), 400, error)
    if detail is not None:
        assert body["detail"] == detail
    nothing_stored(service)


def test_unknown_route_and_wrong_method(service: ServiceProcess) -> None:
    response = service.post({}, bundle="no-such-bundle")
    body = refused(response, 404, "no such route")
    assert body["detail"] == "no bundle 'no-such-bundle' is served here"  # nor which are
    assert httpx.get(service.route(), timeout=10).status_code == 405


# -- what is accepted ------------------------------------------------------------------------
def test_accepted_payloads_are_delivered(
    service: ServiceProcess, emulator: tuple[MoEngageEmulator, str]
) -> None:
    emu, _ = emulator
    batches = payloads(1, 5)
    pretty = orjson.dumps(batches[0], option=orjson.OPT_INDENT_2)  # newlines inside the JSON
    assert b"\n" in pretty
    ids = [service.post(None, content=pretty).json()["id"]]
    ids += [service.post(b).json()["id"] for b in batches[1:]]
    assert ids == sorted(ids) and len(set(ids)) == 5
    expected = {f"user:c-{n}" for n in range(1, 6)} | {
        f"event:{n}-{i}" for n in range(1, 6) for i in range(2)
    }
    assert wait_until(lambda: set(accepted_ids(emu)) == expected, timeout=20)
    assert all(n == 1 for n in accepted_ids(emu).values())
    assert wait_until(lambda: service.metrics()[f'moerules_spool_depth{{bundle="{BUNDLE}"}}'] == 0)


def test_readyz_healthz(service: ServiceProcess) -> None:
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "bundles": [BUNDLE]}
