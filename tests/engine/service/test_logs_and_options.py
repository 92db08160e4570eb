"""The service's log formats and scrubbing, credentials from the environment, and which
``--set`` values reach which bundle."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from moerules.engine.cli.serve import _sets_for
from moerules.engine.service.auth import AuthError, route_auth
from moerules.engine.service.logs import LOGGER, log_event, service_logger


@pytest.fixture
def _loggers() -> Iterator[None]:
    """service_logger configures process-wide loggers: put them back afterwards."""
    names = (LOGGER, "uvicorn", "uvicorn.error")
    saved = [
        (
            logging.getLogger(n),
            list(logging.getLogger(n).handlers),
            logging.getLogger(n).propagate,
            logging.getLogger(n).level,
        )
        for n in names
    ]
    yield
    for logger, handlers, propagate, level in saved:
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("_loggers")
def test_json_lines_off_a_terminal_text_on_one_secrets_scrubbed() -> None:
    secret = "s3cr3t-value-42"
    token = base64.b64encode(f"user:{secret}".encode()).decode()
    for stream, is_json in ((io.StringIO(), True), (_Terminal(), False)):
        logger, scrubber = service_logger(stream=stream)
        scrubber.update([secret])
        log_event(
            logger,
            "request",
            status=202,
            bundle="b",
            ms=1.5,
            error=f"echoed {secret} and Basic {token}",
        )
        line = stream.getvalue().strip()
        assert secret not in line and token not in line
        if is_json:
            entry = orjson.loads(line)
            assert entry["event"] == "request" and entry["status"] == 202
            assert entry["level"] == "info" and entry["ts"].endswith("Z")
            assert entry["error"] == "echoed *** and Basic ***"
        else:
            assert " info    request status=202 bundle=b ms=1.5 error=" in line
            assert line.endswith('"echoed *** and Basic ***"')


def test_route_credentials_from_the_environment() -> None:
    env = {"MOERULES_AUTH_MY_BUNDLE_BASIC": "u:p-secret", "MOERULES_AUTH_BEARER": "shared-token"}
    own = route_auth("my-bundle", env)
    assert own.basic == (b"u:p-secret",) and own.bearer == ()  # its own wins, alone
    shared = route_auth("other", env)
    assert shared.bearer == (b"shared-token",) and shared.basic == ()
    assert shared.allows({"authorization": "Bearer shared-token"})
    assert not shared.allows({"authorization": "Bearer shared-token2"})
    assert route_auth("x", {"MOERULES_AUTH_X": "none"}).open
    for bad, message in [
        ({"MOERULES_AUTH_X_BASIC": "no-colon"}, "must be user:password"),
        ({"MOERULES_AUTH_X_HEADER": "Authorization: x"}, "use MOERULES_AUTH_X_BASIC"),
        ({"MOERULES_AUTH_X_HEADER": "novalue"}, "'Header-Name: value'"),
        ({"MOERULES_AUTH_X": "yes"}, "may only be 'none'"),
        ({"MOERULES_AUTH_X": "none", "MOERULES_AUTH_X_BEARER": "tok-9q"}, "contradicts"),
        ({}, "no credentials for the ingest route of 'x'"),
    ]:
        with pytest.raises(AuthError, match=message) as caught:
            route_auth("x", bad)
        for value in bad.values():  # never the value itself
            if value not in ("none", "yes"):
                assert value not in str(caught.value)


def test_set_values_reach_their_bundle() -> None:
    sets = (
        "destination.endpoint=http://a:1",
        "b1:destination.x=1",
        "rules/b2/bundle.yaml:destination.y=2",
        "b2:destination.z=http://c:3",
    )
    assert _sets_for(sets, "b1") == ["destination.endpoint=http://a:1", "destination.x=1"]
    assert _sets_for(sets, "rules/b2/bundle.yaml") == [
        "destination.endpoint=http://a:1",
        "destination.y=2",
        "destination.z=http://c:3",
    ]
    assert _sets_for(sets, "other") == ["destination.endpoint=http://a:1"]
