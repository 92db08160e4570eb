"""The playground's API over real HTTP: what the page gets, and what it refuses."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import EXAMPLES
from tests.engine.authoring.conftest import Served

RECORD = (EXAMPLES / "mparticle-batches.jsonl").read_text().splitlines()[0]


def _client(served: Served, token: str | None = None) -> httpx.Client:
    headers = {"X-Moerules-Token": served.state.token if token is None else token}
    return httpx.Client(base_url=served.url, headers=headers, timeout=30)


def test_page_carries_its_token_and_no_outside_resource(served: Served) -> None:
    page = httpx.get(served.url)
    assert page.status_code == 200
    assert f'content="{served.state.token}"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "default-src 'none'" in page.headers["content-security-policy"]
    script = httpx.get(served.url + "static/app.js")
    assert script.status_code == 200 and "https://" not in script.text
    assert httpx.get(served.url + "static/..%2Fpyproject.toml").status_code == 404


def test_state_and_evaluate(served: Served) -> None:
    with _client(served) as client:
        state = client.get("/api/state").json()
        assert state["text"] == served.bundle.read_text()
        assert state["records"][0] == {"line": 1, "text": RECORD}
        assert state["schema"]["title"] == "moerules bundle"
        result = client.post("/api/evaluate", json={"text": state["text"], "record": RECORD}).json()
    assert result["compiled"] and result["problems"] == []
    assert [r["url"].split("?")[1] for r in result["requests"]] == [
        "app_id=${MOENGAGE_WORKSPACE_ID}",
        "app_id=${MOENGAGE_WORKSPACE_ID}&project_code=BRANDA01",
    ]
    assert all(r["headers"]["Authorization"] == "***" for r in result["requests"])
    assert '  candidate customer_id: "cust-1001"  -> chosen' in result["trace"]


def test_problems_at_their_line(served: Served) -> None:
    text = served.bundle.read_text().replace(
        "precedence: [customer_id, email]", "precedence: [customer_id, emial]"
    )
    line = text.splitlines().index("  precedence: [customer_id, emial]") + 1
    with _client(served) as client:
        result = client.post("/api/evaluate", json={"text": text, "record": RECORD}).json()
    assert not result["compiled"]
    (problem,) = result["problems"]
    assert (problem["line"], problem["severity"], problem["here"]) == (line, "error", True)
    assert "unknown identity candidate 'emial' (did you mean 'email'?)" in problem["message"]


def test_refusals(served: Served) -> None:
    with _client(served, token="wrong") as client:
        assert client.get("/api/state").status_code == 403
        assert client.post("/api/save", json={"text": "x"}).status_code == 403
    rebound = httpx.get(
        served.url + "api/state",
        headers={"X-Moerules-Token": served.state.token, "Host": "attacker.example"},
    )
    assert rebound.status_code == 403
    with _client(served) as client:
        big = client.post("/api/evaluate", content=b"{" + b" " * (3 << 20) + b"}")
        assert big.status_code == 413
        assert client.post("/api/evaluate", content=b"[1]").status_code == 400
        bomb = (
            "a: &a ["
            + ",".join(["x"] * 50)
            + "]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 50) + "]\n"
                for i in range(4)
            )
        )
        result = client.post("/api/evaluate", json={"text": bomb, "record": "{}"}).json()
        assert not result["compiled"]
        assert (
            "alias" in result["problems"][0]["message"]
            or "nodes" in (result["problems"][0]["message"])
        )


def test_save_refuses_a_file_changed_on_disk(served: Served) -> None:
    with _client(served) as client:
        version = client.get("/api/state").json()["version"]
        served.bundle.write_text(served.bundle.read_text() + "# edited elsewhere\n")
        stale = client.post("/api/save", json={"text": "bundle: x\n", "version": version})
        assert stale.status_code == 409
        assert "changed on disk" in stale.json()["error"]
        fresh = client.get("/api/state").json()["version"]
        saved = client.post("/api/save", json={"text": "bundle: y\n", "version": fresh})
        assert saved.status_code == 200
    assert served.bundle.read_text() == "bundle: y\n"


def test_tests_and_diff_run_on_the_edit(served: Served) -> None:
    text = served.bundle.read_text()
    broken = text.replace("{name: Brand A, code: BRANDA01}", "{name: Brand Z, code: BRANDA01}")
    with _client(served) as client:
        ok = client.post("/api/test", json={"text": text}).json()
        assert ok["summary"] == "1 passed, 0 failed"
        bad = client.post("/api/test", json={"text": broken}).json()
        assert bad["summary"] == "0 passed, 1 failed"
        diff = client.post("/api/diff", json={"text": broken}).json()
    assert diff["summary"].startswith(
        "2 of 22 items change (in 1 of 8 records): 2 events move "
        "from project 'Brand A' to the portfolio level"
    )


def test_secrets_never_reach_the_page(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "playground-secret-4711"
    monkeypatch.setenv("MOENGAGE_DATA_API_KEY", secret)
    monkeypatch.setenv("MOENGAGE_WORKSPACE_ID", "WS42")
    with _client(served) as client:
        text = client.get("/api/state").json()["text"]
        response = client.post("/api/evaluate", json={"text": text, "record": RECORD})
        tests = client.post("/api/test", json={"text": text})
        diff = client.post("/api/diff", json={"text": text.replace('"02"', '"03"')})
    for answer in (response, tests, diff):
        assert secret not in answer.text
    result = response.json()
    assert result["requests"][0]["url"].startswith("https://api-02.moengage.com/v1/transition/WS42")
    assert result["requests"][0]["headers"]["Authorization"] == "***"
