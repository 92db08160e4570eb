"""HTTP/1.1 by hand, for what a well-behaved client never does: send a request head and
only part of its body, then wait for the answer. An emulator that answers proves it
decided on the headers (or on the part it read) without waiting for the rest.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def head(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunks(parts: Iterable[bytes], *, last: bool = False) -> bytes:
    """Chunked transfer coding of `parts`; without the final 0-chunk unless `last`."""
    out = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return out + (b"0\r\n\r\n" if last else b"")


def exchange(url: str, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send `data` on a fresh connection, keep it open, and read one response."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock)


def read_response(sock: socket.socket) -> RawResponse:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {buffer!r}")
        buffer += chunk
    head_bytes, body = buffer.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body[:length])
