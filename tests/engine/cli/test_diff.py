"""`moerules diff`: what a change to a bundle does to a sample, as a user reads it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.conftest import EXAMPLES, Result

SAMPLE = str(EXAMPLES / "mparticle-batches.jsonl")
OVERLAY = str(EXAMPLES / "acme-overlay.yaml")


def _purchase(customer: str, project: str | None, price: object = 12.5) -> bytes:
    attrs = {"moe_project_name": project} if project else {}
    return orjson.dumps(
        {
            "environment": "production",
            "user_identities": {"customer_id": customer},
            "events": [
                {
                    "event_type": "commerce_event",
                    "data": {
                        "custom_attributes": attrs,
                        "currency_code": "USD",
                        "product_action": {
                            "action": "purchase",
                            "transaction_id": "T1",
                            "total_amount": 25.0,
                            "tax_amount": 2.0,
                            "products": [{"id": "p1", "price": price, "quantity": 2}],
                        },
                    },
                },
                {
                    "event_type": "custom_event",
                    "data": {"event_name": "Searched", "custom_attributes": attrs},
                },
            ],
        }
    )


def test_overlay_against_its_base(cli: Callable[..., Result]) -> None:
    result = cli("diff", "mparticle-to-moengage", OVERLAY, "--input", SAMPLE, "--examples", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"diff mparticle-to-moengage -> {OVERLAY}"
    assert lines[1] == (
        "14 of 22 items change (in 5 of 8 records): 12 items are sent to "
        "https://api-02.moengage.com instead of https://api-01.moengage.com; 2 items are now "
        "sent instead of dead-lettered (no usable identity); 2 events move from the portfolio "
        "level to project 'Brand A'; 2 events move from the portfolio level to project "
        "'Brand B'"
    )
    assert lines[2:6] == [
        "                       old       new",
        "  sent                  12        14  (+2)",
        "  dropped                4         4",
        "  dead-lettered          6         4  (-2)",
    ]
    out = result.stdout
    assert (
        "2 events move from the portfolio level to project 'Brand A'\n"
        "  line 1 event 1 ('Viewed Product'): (none) -> \"Brand A\"\n"
        "  ... and 1 more\n" in out
    )
    assert "compared 8 records in" in result.stderr


def test_json_shape(cli: Callable[..., Result]) -> None:
    result = cli("diff", "mparticle-to-moengage", OVERLAY, "--input", SAMPLE, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {
        k: data[k] for k in ("changed", "records", "changed_records", "items", "changed_items")
    } == {"changed": True, "records": 8, "changed_records": 5, "items": 22, "changed_items": 14}
    assert data["totals"] == {
        "old": {"records": 8, "items": 22, "sent": 12, "dropped": 4, "dead_lettered": 6},
        "new": {"records": 8, "items": 22, "sent": 14, "dropped": 4, "dead_lettered": 4},
    }
    routed = [g for g in data["groups"] if g["kind"] == "routing"]
    assert [(g["subject"], g["count"]) for g in routed] == [
        ("the portfolio level -> project 'Brand A'", 2),
        ("the portfolio level -> project 'Brand B'", 2),
    ]
    assert routed[1]["changes"] == [
        {"line": 2, "item": "event 2", "old": None, "new": "Brand B", "detail": "'add_to_cart'"},
        {"line": 6, "item": "event 0", "old": None, "new": "Brand B", "detail": "'refund'"},
    ]
    outcome = next(g for g in data["groups"] if g["kind"] == "outcome")
    assert outcome["description"] == (
        "2 items are now sent instead of dead-lettered (no usable identity)"
    )
    assert [(c["line"], c["item"]) for c in outcome["changes"]] == [
        (3, "user update"),
        (3, "event 0"),
    ]
    assert outcome["changes"][1]["new"] == {
        "outcome": "sent",
        "kind": "event",
        "name": "Opened App",
    }


def test_fail_on_change(cli: Callable[..., Result]) -> None:
    changed = cli("diff", "mparticle-to-moengage", OVERLAY, "--input", SAMPLE, "--fail-on-change")
    assert changed.exit_code == 1
    same = cli(
        "diff",
        "mparticle-to-moengage",
        "mparticle-to-moengage",
        "--input",
        SAMPLE,
        "--fail-on-change",
    )
    assert same.exit_code == 0, same.stderr
    assert same.stdout.splitlines()[1] == "no change: 22 items of 8 records come out the same"


def test_attributes_lost_and_changed(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(b"\n".join([_purchase("c1", "Brand A"), _purchase("c2", None, "8.00")]))
    new = write(
        "new.yaml",
        """
        extends: mparticle-to-moengage
        bundle: new
        events:
          - name: commerce-purchase
            attributes:
              Tax Amount: null
              Products:
                attributes:
                  Price: {from: price, as: string}
    """,
    )
    result = cli("diff", "mparticle-to-moengage", str(new), "--input", str(sample), "--json")
    data = json.loads(result.stdout)
    assert data["summary"] == (
        "2 of 4 items change (in 2 of 2 records): 2 events change attribute "
        "`Products[].Price`; 2 events lose attribute `Tax Amount`"
    )
    price = next(g for g in data["groups"] if g["kind"] == "attribute_changed")
    assert [(c["line"], c["old"], c["new"], c["detail"]) for c in price["changes"]] == [
        (1, 12.5, "12.5", "Products[0].Price; 'purchase'"),
        (2, 8.0, "8.00", "Products[0].Price; 'purchase'"),
    ]
    lost = next(g for g in data["groups"] if g["kind"] == "attribute_removed")
    assert lost["subject"] == "Tax Amount"
    assert [(c["old"], c["new"]) for c in lost["changes"]] == [("2", None), ("2", None)]


def test_rule_removed_drops_events(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(_purchase("c1", None) + b"\n")
    new = write(
        "new.yaml",
        """
        extends: mparticle-to-moengage
        bundle: new
        events:
          - {name: custom-event, remove: true}
    """,
    )
    result = cli("diff", "mparticle-to-moengage", str(new), "--input", str(sample))
    assert result.stdout.splitlines()[1] == (
        "1 of 2 items change (in 1 of 1 records): 1 event is now dropped: event type not "
        "mapped by this bundle"
    )
    assert (
        "  line 1 event 1 ('Searched'): sent as an event 'Searched' -> dropped: event type "
        "not mapped by this bundle\n"
    ) in result.stdout


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


def test_git_revisions_of_an_overlay_and_its_base(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    """``PATH@REV`` reads the file at that commit, and the base it extends at that commit."""
    repo = tmp_path / "repo"
    (repo / "base").mkdir(parents=True)
    base = (EXAMPLES.parent / "rules" / "mparticle-to-moengage" / "bundle.yaml").read_text()
    (repo / "base" / "bundle.yaml").write_text(base)
    overlay = repo / "acme.yaml"
    overlay.write_text("extends: base\nbundle: acme\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    # after the commit: the base renames custom events, the overlay routes Brand A
    renamed = base.replace(
        'event_name: "{{ event.data.event_name }}"',
        'event_name: "app: {{ event.data.event_name }}"',
    )
    (repo / "base" / "bundle.yaml").write_text(renamed)
    overlay.write_text(
        "extends: base\nbundle: acme\nrouting: {projects: [{name: Brand A, code: PA}]}\n"
    )
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(_purchase("c1", "Brand A") + b"\n")
    result = cli("diff", f"{overlay}@HEAD", str(overlay), "--input", str(sample), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["summary"] == (
        "2 of 2 items change (in 1 of 1 records): 2 events move from the portfolio level to "
        "project 'Brand A'; 1 event is renamed 'Searched' -> 'app: Searched'"
    )
    # the same file at the same revision: nothing changes
    same = cli(
        "diff", f"{overlay}@HEAD", f"{overlay}@HEAD", "--input", str(sample), "--fail-on-change"
    )
    assert same.exit_code == 0, same.stderr


def test_bad_revision_and_bad_bundle(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    bundle = EXAMPLES.parent / "rules" / "mparticle-to-moengage" / "bundle.yaml"
    result = cli("diff", f"{bundle}@no-such-revision", str(bundle), "--input", SAMPLE)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{bundle}@no-such-revision:1:1: error: cannot read ")
    bad = write(
        "bad.yaml",
        "extends: mparticle-to-moengage\nbundle: b\nidentity: {precedence: [custmer_id]}\n",
    )
    result = cli("diff", "mparticle-to-moengage", str(bad), "--input", SAMPLE)
    assert result.exit_code == 1
    assert "unknown identity candidate 'custmer_id' (did you mean 'customer_id'?)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    missing = cli("diff", "mparticle-to-moengage", str(bad), "--input", "nope.jsonl")
    assert missing.exit_code == 2
    assert missing.stderr == (
        "moerules: error: input nope.jsonl does not exist; --input takes "
        "a JSON Lines file, or - for stdin\n"
    )


def test_parallel_parts_give_the_same_diff(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A large sample is split across processes; the merged diff is the sequential one."""
    from moerules.engine import iter_lines, load_bundle
    from moerules.engine.authoring import diff

    lines = [
        _purchase(f"c{i}", ["Brand A", None, "brand a"][i % 3], [12.5, "x"][i % 7 == 0])
        for i in range(300)
    ]
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(b"\n\n".join(lines) + b"\n")  # blank lines count in line numbers
    old = load_bundle("mparticle-to-moengage")
    new = load_bundle(OVERLAY)
    monkeypatch.setattr(diff, "PARALLEL_MIN_BYTES", 0)
    parallel = diff.diff_file(old, new, sample, jobs=3).to_dict()
    sequential = diff.diff_bundles(old, new, iter_lines(str(sample))).to_dict()
    assert parallel == sequential
    assert sequential["records"] == 300
    last = sequential["groups"][0]["changes"][-1]
    assert last["line"] == 599


def test_installed_script(moerules: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = moerules(
        "diff", "mparticle-to-moengage", OVERLAY, "--input", SAMPLE, "--fail-on-change"
    )
    assert result.returncode == 1
    assert result.stdout.startswith(f"diff mparticle-to-moengage -> {OVERLAY}\n14 of 22 items")
