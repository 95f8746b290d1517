"""Epic's feedback: its three documented messages (tests/epic_feedback/, origin in its README) are
accepted, stored in the feedback columns and shown by ``mg-cds feedback-report``; malformed Epic forms
are 400 naming the field, like the spec's."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from cds_service import create_app
from cds_service.cli import main as cli
from cds_service.feedback import EPIC_CATEGORY

from .conftest import NOW, SCENARIOS, load_json

EPIC = Path(__file__).parent / "epic_feedback"
MESSAGES = ["overridden-with-reason.json", "overridden-with-extension.json", "accepted-suggestion.json"]
FEEDBACK = "/cds-services/mg-order-select/feedback"
EXTENSION = "com.epic.cdshooks.feedback.overrideReason."


@pytest.fixture
def db_app(tmp_path):
    return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": str(tmp_path / "fb.sqlite3"), "CDS_NOW": NOW,
                       "CDS_LOG_LEVEL": "WARNING"})


def issued_card(client) -> dict:
    """A card the service issued (mg-exacerbating-drug, with a suggestion)."""
    body = client.post("/cds-services/mg-order-select",
                       json=load_json(SCENARIOS / "macrolide-grade3" / "request.json")).get_json()
    return body["cards"][0]


def for_card(message: dict, card: dict) -> dict:
    """Epic's message with its placeholders (card "123456", suggestion "replaceWithGUID") replaced by the
    uuids of ``card``."""
    out = copy.deepcopy(message)
    for item in out["feedback"]:
        item["card"] = card["uuid"]
        for accepted in item.get("acceptedSuggestions", []):
            accepted["id"] = card["suggestions"][0]["uuid"]
    return out


@pytest.mark.parametrize("name", MESSAGES)
def test_each_documented_epic_message_is_accepted_and_stored_as_published(client, app, name):
    message = load_json(EPIC / name)
    assert client.post(FEEDBACK, json=message).status_code == 200
    [row] = app.extensions["mg_cds"]["feedback"].all()
    item = message["feedback"][0]
    assert (row["card_uuid"], row["outcome"], row["outcome_timestamp"]) == (
        item["card"], item["outcome"], item["outcomeTimestamp"])
    override = item.get("overrideReasons", {})
    assert row["user_comment"] == override.get("userComment")
    if "reason" in override:
        reason = override["reason"]
        assert (row["override_code"], row["override_system"], row["override_display"]) == (
            reason["code"], reason["system"], reason["display"])
    elif "extension" in override:
        ext = override["extension"]
        assert (row["override_code"], row["override_system"], row["override_display"]) == (
            ext[EXTENSION + "reasonCategory"], EPIC_CATEGORY, ext[EXTENSION + "reasonDisplay"])
    else:
        assert row["override_code"] is None and row["user_comment"] is None
        assert row["accepted_suggestions"] == '["replaceWithGUID"]'


def test_epic_feedback_on_issued_cards_is_counted_and_its_reasons_reported(db_app, tmp_path, capsys):
    client = db_app.test_client()
    for name in MESSAGES:
        assert client.post(FEEDBACK, json=for_card(load_json(EPIC / name), issued_card(client))).status_code == 200
    report = {r["rule_id"]: r for r in db_app.extensions["mg_cds"]["feedback"].report()}
    row = report["mg-exacerbating-drug"]
    assert (row["issued"], row["accepted"], row["overridden"], row["override_rate"]) == (3, 1, 2, 0.667)
    # Both reasons: the service-sent reason (its display "bad") and the one built in Epic.
    assert row["top_override_reasons"] == "Does not meet criteria (1); bad (1)"
    assert "(unknown rule)" not in report
    csv_path = tmp_path / "report.csv"
    assert cli(["feedback-report", "--db", str(tmp_path / "fb.sqlite3"), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "Does not meet criteria (1)" in out and "bad (1)" in out
    assert "mg-exacerbating-drug,3,1,2,0.667,Does not meet criteria (1); bad (1)" in csv_path.read_text()


def overridden(override: object, key: str = "overrideReasons", outcome: str = "overridden") -> dict:
    return {"feedback": [{"card": "c1", "outcome": outcome, "outcomeTimestamp": NOW, key: override}]}


def stored(client, app, body: dict) -> dict:
    assert client.post(FEEDBACK, json=body).status_code == 200
    return app.extensions["mg_cds"]["feedback"].all()[-1]


def test_an_epic_title_that_differs_from_the_display_is_kept_with_it(client, app):
    row = stored(client, app, overridden({"extension": {EXTENSION + "reasonCategory": 7,
                                                        EXTENSION + "reasonTitle": "Not indicated",
                                                        EXTENSION + "reasonDisplay": "Patient is on hospice"}}))
    assert (row["override_code"], row["override_display"]) == ("7", "Not indicated: Patient is on hospice")


def test_an_epic_reason_without_a_category_is_reported_by_its_display(client, app):
    row = stored(client, app, overridden({"extension": {EXTENSION + "reasonTitle": "Other"}}))
    assert (row["override_code"], row["override_system"], row["override_display"]) == (None, None, "Other")
    [line] = app.extensions["mg_cds"]["feedback"].report()
    assert line["top_override_reasons"] == "Other (1)"


def test_a_reason_coding_is_preferred_to_the_extension_when_both_are_sent(client, app):
    row = stored(client, app, overridden({"reason": {"code": "dose-intended", "system": "urn:mg-cds:override-reason"},
                                          "extension": {EXTENSION + "reasonCategory": "45"}}))
    assert (row["override_code"], row["override_system"]) == ("dose-intended", "urn:mg-cds:override-reason")


def test_the_spec_form_may_carry_epic_extension_too(client, app):
    row = stored(client, app, overridden({"extension": {EXTENSION + "reasonCategory": "45"}}, key="overrideReason"))
    assert (row["override_code"], row["override_system"]) == ("45", EPIC_CATEGORY)


@pytest.mark.parametrize("body,field", [
    (overridden([{"reason": {"code": "x"}}]), "feedback[0].overrideReasons must be an object"),
    (overridden({"reason": {"system": "x"}}), "feedback[0].overrideReasons.reason"),
    (overridden({"reason": {"code": "x"}, "userComment": 5}), "feedback[0].overrideReasons.userComment"),
    (overridden({"extension": ["not", "an", "object"]}), "feedback[0].overrideReasons.extension"),
    (overridden({"extension": {EXTENSION + "reasonCategory": ["45"]}}),
     "feedback[0].overrideReasons.extension." + EXTENSION + "reasonCategory"),
    (overridden({"extension": {EXTENSION + "reasonDisplay": "\udbea"}}),
     "feedback[0].overrideReasons.extension." + EXTENSION + "reasonDisplay"),
    (overridden({"userComment": "x"}, outcome="accepted"), "feedback[0].overrideReasons is only allowed"),
    ({"feedback": [{"card": "c1", "outcome": "overridden", "outcomeTimestamp": NOW,
                    "overrideReason": {"userComment": "a"}, "overrideReasons": {"userComment": "b"}}]},
     "both overrideReason and overrideReasons"),
], ids=["array", "reason-without-code", "comment-not-text", "extension-not-object", "category-not-text",
        "display-not-unicode", "with-accepted", "both-spellings"])
def test_malformed_epic_feedback_is_400_naming_the_field(client, app, body, field):
    resp = client.post(FEEDBACK, json=body)
    assert resp.status_code == 400
    assert field in resp.get_json()["issue"][0]["details"]["text"]
    assert app.extensions["mg_cds"]["feedback"].all() == []
