"""`user.drop`: user changes a record lists but the destination is not sent are counted, one
dropped user update per entry, so the report shows them and still balances."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.engine.api import dry_run, load_bundle
from moerules.engine.errors import RuleError

from tests.conftest import MINIMAL_BUNDLE

REASON = "user attribute deletion not forwarded"
BUNDLE = (
    MINIMAL_BUNDLE
    + f"""
user:
  when: batch.user_attributes
  spread: [{{from: batch.user_attributes}}]
  drop:
    - {{each: batch.deleted_user_attributes, reason: {REASON}}}
    - {{each: batch.gone, reason: other}}
"""
)


def run(
    tmp_path: Path, bundle: str, *batches: dict[str, object]
) -> tuple[list[bytes], dict[str, Any]]:
    path = tmp_path / "bundle.yaml"
    path.write_text(bundle)
    compiled = load_bundle(path, env={"TEST_KEY": "k"})
    out = io.BytesIO()
    lines = [(i + 1, orjson.dumps(b)) for i, b in enumerate(batches)]
    report = dry_run(compiled, lines, out)
    return out.getvalue().splitlines(), report.to_dict()


def test_each_entry_is_one_dropped_user_update(tmp_path: Path) -> None:
    requests, report = run(
        tmp_path,
        BUNDLE,
        {
            "user_identities": {"customer_id": "c1"},
            "user_attributes": {"tier": "gold"},
            "deleted_user_attributes": ["old_plan", "promo"],
        },
        {
            "user_identities": {"customer_id": "c2"},
            "deleted_user_attributes": ["x"],
            "gone": ["a", "b", "c"],
        },
        # not a list, or absent: nothing to count
        {"user_identities": {"customer_id": "c3"}, "deleted_user_attributes": "old_plan"},
        {"user_identities": {"customer_id": "c4"}},
    )
    assert report["user_updates_in"] == 1 + 2 + 1 + 3
    assert report["delivered_user_updates"] == 1
    assert report["dropped"] == {REASON: 3, "other": 3}
    assert report["balanced"] is True
    assert len(requests) == 1
    elements = orjson.loads(requests[0])["body"]["elements"]
    assert elements == [{"type": "customer", "customer_id": "c1", "attributes": {"tier": "gold"}}]


def test_counted_without_an_identity_too(tmp_path: Path) -> None:
    """A drop is a drop: the entries are counted, not dead-lettered for want of a user."""
    _, report = run(tmp_path, BUNDLE, {"deleted_user_attributes": ["old_plan"]})
    assert report["dropped"] == {REASON: 1}
    assert report["dead_lettered"] == {}
    assert report["balanced"] is True


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("{each: batch.deleted_user_attributes, reason: '  '}", "drop reason is blank"),
        ("{each: 'deleted_user_attributes', reason: r}", "starts at 'deleted_user_attributes'"),
    ],
)
def test_bad_drop_is_an_error_at_its_position(tmp_path: Path, drop: str, message: str) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(MINIMAL_BUNDLE + f"user:\n  drop:\n    - {drop}\n")
    with pytest.raises(RuleError) as caught:
        load_bundle(path, env={"TEST_KEY": "k"})
    problems = [str(p) for p in caught.value.problems]
    assert any(message in p and f"{path}:" in p for p in problems), problems
