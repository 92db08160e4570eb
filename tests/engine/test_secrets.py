"""Every derived form of a secret is scrubbed; short or absent secrets change nothing."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from moerules.engine.secrets import Scrubber, scrubber

KEY = "k3y/with+odd=chars&more"


def forms(key: str) -> dict[str, str]:
    """The shapes a key takes on the way out, each inside some text."""
    return {
        "plain": key,
        "upper": key.upper(),
        "url": quote(key, safe=""),
        "url, lower-case escapes": quote(key, safe="").lower(),
        "form": quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "json in json": json.dumps(json.dumps(key))[1:-1],
        **{
            f"basic, user {user!r}": base64.b64encode(f"{user}:{key}".encode()).decode()
            for user in ("", "W", "WS", "WS_DELIVERY")
        },
        "url-safe base64": base64.urlsafe_b64encode(f"WS:{key}".encode()).decode().rstrip("="),
        "base64 of the key alone": base64.b64encode(key.encode()).decode(),
    }


@pytest.mark.parametrize("name", list(forms(KEY)))
def test_each_form_is_scrubbed(name: str) -> None:
    form = forms(KEY)[name]
    text = f'{{"error": "denied", "echo": "Authorization: Basic {form}", "n": 1}}'
    out = scrubber([KEY]).text(text)
    assert form not in out
    assert out.startswith('{"error": "denied", "echo": "Authorization: Basic ')
    assert out.endswith('", "n": 1}')
    assert "***" in out
    assert scrubber([KEY]).bytes(text.encode()) == out.encode()


def test_the_whole_basic_token_goes() -> None:
    token = base64.b64encode(f"WORKSPACE42:{KEY}".encode()).decode()
    assert scrubber([KEY]).text(f"Basic {token}\n") == "Basic ***\n"


def test_text_without_secrets_is_unchanged() -> None:
    text = 'Basic V1M6b3RoZXIta2V5LXZhbHVl and a JSON body {"a": 1}'
    assert scrubber([KEY]).text(text) == text
    assert scrubber([]).text(text) == text
    assert not scrubber([])
    assert not scrubber(["short"])  # too short to scrub without corrupting other text


def test_built_once_per_set_of_secrets() -> None:
    assert scrubber([KEY, "another-secret"]) is scrubber(["another-secret", KEY])
    assert isinstance(scrubber([KEY]), Scrubber)
