"""Who may post to an ingest route: credentials per route, from the environment.

Each partner authenticates as it can (reference §2, §7): MoEngage Streams with Basic auth or a
static header, Mixpanel's cohort webhook with Basic auth, Amplitude's with a header. For the
route of bundle NAME (upper-cased, every other character than a letter or digit as ``_``):

- ``MOERULES_AUTH_<NAME>_BASIC=user:password``: ``Authorization: Basic ...``;
- ``MOERULES_AUTH_<NAME>_BEARER=token``: ``Authorization: Bearer token``;
- ``MOERULES_AUTH_<NAME>_HEADER="Header-Name: value"``: a static header;
- ``MOERULES_AUTH_<NAME>=none``: no authentication (say so explicitly).

The same variables without ``_<NAME>`` apply to every route that has none of its own. A route
accepts a request that matches any one of its credentials (two can be set while one is
rotated). Secrets are compared in constant time (``hmac.compare_digest``) and are never
logged: ``secrets()`` lists them for the log scrubber.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["AuthError", "RouteAuth", "auth_variables", "route_auth"]

PREFIX = "MOERULES_AUTH"


class AuthError(ValueError):
    """The environment's credentials for a route are missing or malformed."""


def env_name(bundle: str) -> str:
    """The bundle's part of the variable names: ``moengage-to-amplitude`` -> MOENGAGE_TO_..."""
    return re.sub(r"[^A-Z0-9]", "_", bundle.upper())


def auth_variables(bundle: str) -> list[str]:
    """The variables that configure the route of ``bundle``, its own first."""
    own = f"{PREFIX}_{env_name(bundle)}"
    return [
        f"{own}_BASIC",
        f"{own}_BEARER",
        f"{own}_HEADER",
        own,
        f"{PREFIX}_BASIC",
        f"{PREFIX}_BEARER",
        f"{PREFIX}_HEADER",
        PREFIX,
    ]


@dataclass(frozen=True)
class RouteAuth:
    """The credentials one route accepts; ``open``: none are needed."""

    basic: tuple[bytes, ...] = ()  # "user:password", UTF-8
    bearer: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, bytes], ...] = ()  # (lower-cased name, value)
    open: bool = False
    sources: tuple[str, ...] = field(default=(), compare=False)  # the variables read

    @property
    def challenge(self) -> str | None:
        """The WWW-Authenticate header of a 401, when Basic is what the route takes."""
        return 'Basic realm="moerules"' if self.basic else None

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True when ``headers`` (lower-cased names) carry one of the route's credentials."""
        if self.open:
            return True
        ok = False
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        scheme = scheme.lower()
        token = token.strip()
        if self.basic and scheme == "basic":
            try:
                given = base64.b64decode(token, validate=True)
            except (binascii.Error, ValueError):
                given = b""
            for expected in self.basic:
                ok |= _same(given, expected)
        if self.bearer and scheme == "bearer":
            for expected in self.bearer:
                ok |= _same(token.encode("utf-8", "replace"), expected)
        for name, expected in self.headers:
            value = headers.get(name)
            if value is not None:
                ok |= _same(value.strip().encode("utf-8", "replace"), expected)
        return ok

    def secrets(self) -> list[str]:
        """Every secret value, in the forms a log line could show it."""
        out: list[str] = []
        for pair in self.basic:
            text = pair.decode()
            out += [text, text.partition(":")[2], base64.b64encode(pair).decode()]
        out += [token.decode() for token in self.bearer]
        out += [value.decode() for _, value in self.headers]
        return [s for s in out if s]


def _same(given: bytes, expected: bytes) -> bool:
    """Constant-time equality (in the length of ``given``; the lengths may differ)."""
    return hmac.compare_digest(given, expected)


def route_auth(bundle: str, env: Mapping[str, str]) -> RouteAuth:
    """The credentials of the route of ``bundle``; AuthError when none are configured or
    a value is malformed (the message names the variable, never its value)."""
    own = f"{PREFIX}_{env_name(bundle)}"
    for prefix in (own, PREFIX):  # the route's own settings win over the shared ones
        names = [f"{prefix}_BASIC", f"{prefix}_BEARER", f"{prefix}_HEADER", prefix]
        if not any(env.get(name) for name in names):
            continue
        mode = env.get(prefix, "").strip().lower()
        if mode and mode != "none":
            raise AuthError(
                f"{prefix} may only be 'none' (no authentication); use "
                f"{prefix}_BASIC, {prefix}_BEARER or {prefix}_HEADER for "
                "credentials"
            )
        basic = env.get(f"{prefix}_BASIC", "")
        bearer = env.get(f"{prefix}_BEARER", "")
        header = env.get(f"{prefix}_HEADER", "")
        if mode == "none" and (basic or bearer or header):
            raise AuthError(
                f"{prefix}=none contradicts the credentials set in {prefix}_BASIC/_BEARER/_HEADER"
            )
        if mode == "none":
            return RouteAuth(open=True, sources=(prefix,))
        basics: tuple[bytes, ...] = ()
        if basic:
            user, sep, password = basic.partition(":")
            if not sep or not user or not password:
                raise AuthError(f"{prefix}_BASIC must be user:password (both non-empty)")
            basics = (basic.encode(),)
        headers: tuple[tuple[str, bytes], ...] = ()
        if header:
            name, sep, value = header.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name) or not value:
                raise AuthError(f"{prefix}_HEADER must be 'Header-Name: value'")
            if name.lower() == "authorization":
                raise AuthError(
                    f"{prefix}_HEADER: use {prefix}_BASIC or {prefix}_BEARER for "
                    "the Authorization header"
                )
            headers = ((name.lower(), value.encode()),)
        used = tuple(n for n in names if env.get(n))
        return RouteAuth(
            basics, (bearer.strip().encode(),) if bearer.strip() else (), headers, sources=used
        )
    raise AuthError(
        f"no credentials for the ingest route of {bundle!r}: set {own}_BASIC=user:password, "
        f"{own}_BEARER=token or {own}_HEADER='Name: value' (or the same without _"
        f"{env_name(bundle)} for every route), or {own}=none to accept unauthenticated posts"
    )
