"""Seed 003's MTU-exempt events are marked in moengage-to-mixpanel: `moerules explain` names the
rule that took each event, so a reader sees which events will not count toward MTU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from moerules.engine.api import load_bundle

from tests.conftest import Result

# seed 003, "The following MoEngage events are exempt from MTU calculations", by code (both
# generations of card codes)
EXEMPT = {
    "n_c_s": "Card Sent",
    "MOE_CARD_SENT": "Card Sent",
    "MOE_CARD_CAMPAIGN_DELIVERED": "Card Delivered",
    "MOE_CARD_DELIVERED": "Card Delivered",
    "MOE_CONNECTOR_SENT": "Connector Sent",
    "MOE_EMAIL_SENT": "Email Sent",
    "MOE_EMAIL_DEFERRED": "Email Deferred",
    "MOE_EMAIL_DELIVERED": "Email Delivered",
    "MOE_EMAIL_DROP": "Email Dropped",
    "MOE_EMAIL_HARD_BOUNCE": "Email Bounced",
    "MOE_EMAIL_SOFT_BOUNCE": "Email Soft Bounced",
    "NOTIFICATION_RECEIVED_MOE": "Notification Received Android",
    "n_i_s": "Notification Sent iOS",
    "NOTIFICATION_RECEIVED_IOS_MOE": "Notification Received iOS",
    "NOTIFICATION_RECEIVED_WEB_MOE": "Notification Received Web",
    "SMS_SENT": "SMS Sent",
    "SMS_DELIVERED": "SMS Delivered",
    "USER_ENTERED_FLOW": "User Entered Flow",
    "USER_EXITED_FLOW": "User Exited Flow",
}
COUNTED = {
    "MOE_EMAIL_OPEN": "Email Opened",
    "NOTIFICATION_CLICKED_MOE": "Notification Clicked Android",
    "MOE_CARD_CAMPAIGN_VIEWED": "Card Viewed",
    "Added to Cart": "Added to Cart",
}


def test_the_seventeen_exempt_events_are_the_rule_of_their_own(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    assert len(set(EXEMPT.values())) == 17
    codes = [*EXEMPT, *COUNTED]
    path = tmp_path / "payload.json"
    path.write_text(
        json.dumps(
            {
                "app_name": "App",
                "events": [
                    {
                        "event_code": code,
                        "event_name": code,
                        "event_uuid": f"u-{i}",
                        "event_time": 1732300000,
                        "uid": "cust-1",
                    }
                    for i, code in enumerate(codes)
                ],
            }
        )
    )
    result = cli("explain", "moengage-to-mixpanel", "--event", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    outcomes = [
        s["outcome"]
        for s in json.loads(result.stdout)["steps"]
        if s["step"] == "outcome" and s["outcome"].startswith("event ")
    ]
    expected = [f"event {name!r} (rule 'mtu-exempt-events')" for name in EXEMPT.values()]
    expected += [f"event {name!r} (rule 'events')" for name in COUNTED.values()]
    assert outcomes == expected


def test_the_bundle_marks_exactly_the_seeds_list() -> None:
    compiled = load_bundle("moengage-to-mixpanel", env={"MIXPANEL_PROJECT_TOKEN": "t"})
    rule = next(r for r in compiled.model.events if r.name == "mtu-exempt-events")
    assert rule.when is not None
    marked = {code.strip(" '\n") for code in rule.when.split("[")[1].split("]")[0].split(",")}
    assert marked == set(EXEMPT)
