"""What an emulator learns from a request before and while it reads the body.

The partners refuse a request on its headers (auth, content type, declared size) before
they read a byte of its body; the emulators do the same, then read the body as a stream
that stops at the partner's size limit. So a client that sends a 10 GB body, or a
chunked body that never ends, costs an emulator at most the limit in memory and gets its
413 as soon as the limit is passed.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import NamedTuple

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body (declared or streamed so far) is larger than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class BasicAuth(NamedTuple):
    username: str
    password: str


def parse_basic_auth(value: str | None) -> BasicAuth | None:
    """Decode an `Authorization: Basic` header; None when absent or not valid Basic."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    return BasicAuth(username, password)


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased ('' when missing)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def content_encoding(request: Request) -> str:
    """The Content-Encoding, lower-cased; '' for none or identity."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    return "" if encoding == "identity" else encoding


def host_name(request: Request) -> str:
    """The Host header without its port, lower-cased."""
    host = request.headers.get("host", "").strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def declared_length(request: Request) -> int | None:
    """Content-Length as sent (the HTTP layer has already refused a malformed one)."""
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def check_declared_length(request: Request, limit: int) -> None:
    """Raise BodyTooLarge when the declared Content-Length exceeds `limit`, unread."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read as a stream that stops once it passes `limit` (BodyTooLarge).

    A declared Content-Length over the limit is refused before the first read. Raises
    starlette's ClientDisconnect when the client goes away mid-body.
    """
    check_declared_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body to at most `limit` bytes (BodyTooLarge beyond), so a
    small compressed body cannot expand into gigabytes. Raises zlib.error when the data
    is not gzip or is truncated. Concatenated gzip members are all decompressed.
    """
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflater.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise BodyTooLarge(limit)
        if not inflater.eof:
            if inflater.unconsumed_tail:  # output room ran out before the input did
                raise BodyTooLarge(limit)
            raise zlib.error("truncated gzip stream")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
