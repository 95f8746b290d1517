"""Client profiles (cds_service.profiles): the spec profile is the response as it was; the Epic profile
writes every scenario the way Epic's CDS Hooks documentation says its client reads it (alphanumeric
topic codes, one per rule, selectionBehavior any, one described action per suggestion, no
update actions, the RxNorm OID, the dose in the text, isRecommended on alternatives), and an Epic-shaped
request (tests/epic/) is recognised by its extensions."""
from __future__ import annotations

import copy
import json
import re

import orjson
import pytest
from markdown_it import MarkdownIt

from cds_service import create_app
from cds_service.cards import Action, Card, CDSResponse, Coding, Source, Suggestion
from cds_service.config import load_config
from cds_service.decode import decode_body
from cds_service.invocation import hook_input
from cds_service.profiles import (
    EPIC,
    RXNORM_OID,
    RXNORM_URL,
    SPEC,
    TODO,
    TopicCodes,
    amount_texts,
    choose,
    epic_json,
    render,
    states_dose,
)
from hooks.rules.registry import REGISTRY
from hooks.services import EPIC_TOPICS

from .conftest import NOW, SCENARIOS, load_json, scenario_names

EPIC_DIR = SCENARIOS.parent.parent / "tests" / "epic"
MARKDOWN = MarkdownIt("commonmark").enable("table")  # markdown-it-py: in the test env via schemathesis -> rich
UUID_KEYS = ("uuid",)
RULE_OF = {code: rule_id for rule_id, code in EPIC_TOPICS.codes.items()}  # Epic code -> rule (tests only)


def _app(profile: str):
    return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW,
                       "CDS_LOG_LEVEL": "WARNING", "CDS_CLIENT_PROFILE": profile})


@pytest.fixture(scope="module")
def clients():
    return {p: _app(p).test_client() for p in ("auto", SPEC, EPIC)}


def _scenario(name: str) -> tuple[dict, str]:
    return load_json(SCENARIOS / name / "request.json"), load_json(SCENARIOS / name / "expected.json")["service"]


def _post(client, service: str, request: dict) -> dict:
    resp = client.post(f"/cds-services/{service}", json=request)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _no_uuids(value):
    if isinstance(value, dict):
        return {k: ("-" if k in UUID_KEYS else _no_uuids(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_uuids(v) for v in value]
    return value


def _created_medication_requests(card: dict):
    for s in card.get("suggestions", []):
        for a in s["actions"]:
            if a["type"] == "create" and a.get("resource", {}).get("resourceType") == "MedicationRequest":
                yield a


def _dose_amounts(resource: dict) -> list[str] | None:
    for dosage in resource.get("dosageInstruction", []):
        for dr in dosage.get("doseAndRate", []):
            q = dr.get("doseQuantity")
            if q:
                return amount_texts(float(q["value"]), q["unit"])
    return None


def _html_tokens(markdown: str) -> list[str]:
    tokens = MARKDOWN.parse(markdown)
    inline = [c for t in tokens for c in (t.children or [])]
    return [t.content for t in tokens + inline if t.type in ("html_block", "html_inline")]


# ------------------------------------------------------------------------------------- the mapping

def test_every_registered_rule_has_a_unique_alphanumeric_epic_code():
    assert set(EPIC_TOPICS.codes) == set(REGISTRY), "every rule (and only rules) has an epic_topic_code in knowledge/rules.json"
    codes = list(EPIC_TOPICS.codes.values())
    assert len(set(codes)) == len(codes)
    for rule_id, code in EPIC_TOPICS.codes.items():
        assert re.fullmatch(r"[A-Za-z0-9]{1,100}", code), code
        assert EPIC_TOPICS.code_for(rule_id) == code


def test_no_documented_epic_feedback_message_carries_a_topic_code():
    """Why feedback is attributed by card uuid (the issued-card log), not by mapping topic codes back."""
    messages = [load_json(p) for p in sorted((EPIC_DIR.parent / "epic_feedback").glob("*.json"))]
    assert len(messages) == 3
    for message in messages:
        assert "topic" not in json.dumps(message) and all("card" in item for item in message["feedback"])


def test_a_table_with_a_bad_or_repeated_code_is_refused():
    with pytest.raises(ValueError, match="alphanumeric"):
        TopicCodes("urn:x", {"a-rule": "has-dash"})
    with pytest.raises(ValueError, match="alphanumeric"):
        TopicCodes("urn:x", {"a-rule": "x" * 101})
    with pytest.raises(ValueError, match="unique"):
        TopicCodes("urn:x", {"a": "Same", "b": "Same"})


# ------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("setting, extension, profile", [
    ("auto", {"com.epic.cdshooks.request.bpa-trigger-action": "18"}, EPIC),
    ("auto", {"com.example.other": 1}, SPEC),
    ("auto", {"internal.epic.cdshooks.request.epic-emp-id": "1"}, SPEC),  # not the com.epic.cdshooks. prefix
    ("auto", None, SPEC),
    ("spec", {"com.epic.cdshooks.request.fhir-version": "R4"}, SPEC),
    ("epic", None, EPIC),
])
def test_the_profile_is_chosen_from_the_setting_and_the_request_extension(setting, extension, profile):
    assert choose(setting, extension) == profile


def test_an_unknown_profile_setting_is_refused():
    with pytest.raises(ValueError, match="CDS_CLIENT_PROFILE"):
        load_config({"CDS_CLIENT_PROFILE": "cerner"}, environ={})
    assert load_config({}, environ={})["CDS_CLIENT_PROFILE"] == "auto"
    assert load_config({}, environ={"CDS_CLIENT_PROFILE": "epic"})["CDS_CLIENT_PROFILE"] == "epic"


# ------------------------------------------------------------------------------------- spec profile

@pytest.mark.parametrize("name", scenario_names())
def test_the_spec_profile_sends_the_response_as_it_was(name, clients):
    """Byte for byte (uuids aside, which are new per call) the body of today's code path,
    orjson.dumps(response.to_json()), for the same request evaluated without the profile code."""
    _, service_id = _scenario(name)
    app = clients["auto"].application
    service = app.extensions["mg_cds"]["services"][service_id]
    raw = (SCENARIOS / name / "request.json").read_bytes()
    hook_in, _ = hook_input(decode_body(raw, service.decoder), service, app.config)
    direct = orjson.dumps(_no_uuids(orjson.loads(orjson.dumps(service.evaluate(hook_in).to_json()))))
    for profile in ("auto", SPEC):
        resp = clients[profile].post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
        assert resp.status_code == 200
        assert orjson.dumps(_no_uuids(orjson.loads(resp.data))) == direct
        assert resp.data == orjson.dumps(orjson.loads(resp.data))  # orjson's own bytes, unchanged by the profile


def test_spec_rendering_is_to_json_unchanged():
    response = _synthetic()
    assert render(response, SPEC, EPIC_TOPICS) == orjson.dumps(response.to_json())


# ------------------------------------------------------------------------------------- Epic profile

def _check_epic_card(card: dict, spec_card: dict) -> None:
    code = card["source"]["topic"]["code"]
    assert re.fullmatch(r"[A-Za-z0-9]{1,100}", code), code
    assert RULE_OF[code] == spec_card["source"]["topic"]["code"]
    suggestions = card.get("suggestions", [])
    if suggestions:
        assert card["selectionBehavior"] == "any"
    else:
        assert "selectionBehavior" not in card
    assert len(suggestions) <= len(spec_card.get("suggestions", [])), "a suggestion is never split"
    for s in suggestions:
        assert len(s["actions"]) == 1, s
        action = s["actions"][0]
        assert action["type"] in ("create", "delete"), "Epic lists create and delete on unsigned orders, no update"
        assert action.get("description", "").strip()
    for action in _created_medication_requests(card):
        text = json.dumps(action["resource"])
        assert RXNORM_URL not in text
        amounts = _dose_amounts(action["resource"])
        if amounts:
            assert states_dose(action["description"], amounts), action["description"]
            assert states_dose(card["detail"], amounts), card["detail"]
    for spec_action in (a for s in spec_card.get("suggestions", []) for a in s["actions"]):
        if spec_action["type"] == "update":
            assert f"{TODO}: {spec_action['description']}" in card["detail"]
        if spec_action["type"] == "create" and RXNORM_URL in json.dumps(spec_action.get("resource")):
            assert any(RXNORM_OID in json.dumps(a.get("resource")) for s in suggestions for a in s["actions"])
    recommended = [s for s in suggestions if s.get("isRecommended")]
    if any("isRecommended" in s for s in suggestions):
        assert len(recommended) == 1, "exactly one preferred suggestion on a card of alternatives"
        assert "alternatives" in card["detail"]
    for link in card.get("links", []):
        assert link["label"].strip() and link["type"] in ("absolute", "smart")
    assert not _html_tokens(card["detail"]), "detail is GitHub-flavoured Markdown, no HTML"


@pytest.mark.parametrize("name", scenario_names())
def test_every_scenario_in_the_epic_profile(name, clients):
    request, service_id = _scenario(name)
    spec = _post(clients[SPEC], service_id, request)
    epic = _post(clients[EPIC], service_id, request)
    assert len(epic["cards"]) == len(spec["cards"])
    for card, spec_card in zip(epic["cards"], spec["cards"]):
        assert card["summary"] == spec_card["summary"] and card["indicator"] == spec_card["indicator"]
        _check_epic_card(card, spec_card)
        CDSResponse.from_json({"cards": [card]})  # still a valid CDS Hooks card


def _card(body: dict, rule_id: str) -> dict:
    return next(c for c in body["cards"] if RULE_OF.get(c["source"]["topic"]["code"], c["source"]["topic"]["code"]) == rule_id)


def test_severe_mg_marks_ivig_as_the_default_of_two_alternatives_and_says_why(clients):
    request, service_id = _scenario("f11-pv-rituximab-consider-cites-cochrane-and-cohort")
    body = _post(clients[EPIC], service_id, request)
    card = _card(body, "mg-severe-management")
    marks = {s["actions"][0]["description"]: s.get("isRecommended") for s in card["suggestions"]}
    assert [d for d, r in marks.items() if r] == [next(d for d in marks if d.startswith("Order IVIG"))]
    assert marks["Order plasma exchange instead"] is False
    assert "alternatives: choose one" in card["detail"] and "no preference" in card["detail"]
    assert "ASCO guideline" in card["detail"]
    regimens = _card(body, "rituximab-consider")
    assert sum(bool(s.get("isRecommended")) for s in regimens["suggestions"]) == 1
    assert regimens["suggestions"][0]["isRecommended"] is True
    assert "do not rank them" in regimens["detail"]


def test_severe_mg_without_ivig_to_offer_has_no_alternatives(clients):
    request, service_id = _scenario("f03-pv-severe-iga-deficient-no-standard-ivig")
    card = _card(_post(clients[EPIC], service_id, request), "mg-severe-management")
    assert not any("isRecommended" in s for s in card.get("suggestions", []))
    assert "**Alternatives:**" not in card["detail"]


def test_a_stop_suggestion_becomes_a_line_to_do_and_no_button(clients):
    request, service_id = _scenario("f01-pv-ici-on-hold-after-grade3-history-stop")
    spec = _card(_post(clients[SPEC], service_id, request), "ici-discontinue")
    card = _card(_post(clients[EPIC], service_id, request), "ici-discontinue")
    assert spec["suggestions"][0]["actions"][0]["type"] == "update"
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert f"- {TODO}: Stop " in card["detail"]
    assert card["detail"].index(TODO) < card["detail"].index("**Why:**")


def test_the_epic_profile_keeps_rule_ids_in_the_issued_card_log_and_the_metrics():
    from cds_service import metrics
    app = _app(EPIC)
    request, service_id = _scenario("ivig-dose-too-high")
    body = _post(app.test_client(), service_id, request)
    uuid = body["cards"][0]["uuid"]
    assert app.extensions["mg_cds"]["feedback"].rules_for([uuid]) == {uuid: "ivig-dose-check"}
    text = metrics.render()[0].decode()
    assert re.search(r'mgcds_cards_total\{[^}]*rule="ivig-dose-check"', text)
    assert "MGCDSIvigDoseCheck" not in text


# ------------------------------------------------------------------------------------- Epic-shaped requests

@pytest.mark.parametrize("fixture, rule_id", [("order-select-documented-shape", "ivig-dose-check"),
                                              ("order-select-medication-entry", "rituximab-dose-check")])
def test_an_epic_shaped_request_is_answered_in_both_profiles(fixture, rule_id, clients):
    request = load_json(EPIC_DIR / f"{fixture}.json")
    spec = _post(clients[SPEC], "mg-order-select", request)
    auto = _post(clients["auto"], "mg-order-select", request)  # detected from com.epic.cdshooks.* extensions
    spec_card = next(c for c in spec["cards"] if c["source"]["topic"]["code"] == rule_id)
    assert spec_card["suggestions"][0]["actions"][0]["type"] == "update"
    card = _card(auto, rule_id)
    assert card["source"]["topic"]["code"] == EPIC_TOPICS.codes[rule_id]
    _check_epic_card(card, spec_card)
    assert "suggestions" not in card  # the dose correction is an update: text in Epic
    assert f"{TODO}: {spec_card['suggestions'][0]['actions'][0]['description']}" in card["detail"]


# ------------------------------------------------------------------------------------- rendering rules

def _synthetic() -> CDSResponse:
    rx = {"resourceType": "MedicationRequest", "status": "draft", "intent": "order",
          "medicationCodeableConcept": {"coding": [{"system": RXNORM_URL, "code": "121191"}], "text": "Rituximab"},
          "dosageInstruction": [{"text": "rituximab 1000 mg IV", "doseAndRate": [{"doseQuantity": {
              "value": 1000, "unit": "mg"}}]}]}
    both = Suggestion(label="Swap the order", actions=[
        Action(type="delete", description="Remove the draft", resourceId="MedicationRequest/d1"),
        Action(type="create", resource=rx)])
    update = Suggestion(label="Fix", actions=[Action(type="update", description="Change to 10 mg",
                                                     resource={"resourceType": "MedicationRequest", "id": "d2"})])
    source = Source(label="Test", topic=Coding(code="ivig-dose-check", system="urn:mg-cds:rule"))
    return CDSResponse(cards=[
        Card(summary="Two actions", indicator="warning", source=source, detail="- finding\n\n**Why:** why",
             suggestions=[both, update], selectionBehavior="at-most-one"),
        Card(summary="Only an update", indicator="info", source=copy.deepcopy(source), detail="- finding",
             suggestions=[copy.deepcopy(update)], selectionBehavior="at-most-one")])


def test_a_swap_is_not_split_into_pieces_and_an_update_only_card_loses_its_suggestions():
    """A delete + create suggestion split in two would let a clinician accept only the create (a
    double order): the delete stays the button, with the suggestion's own uuid (the one the
    issued-card log holds), and the create is a line of the detail saying it goes with it."""
    response = _synthetic()
    before = response.to_json()
    out = epic_json(response, EPIC_TOPICS)
    assert response.to_json() == before, "rendering does not change the model"
    first, second = out["cards"]
    assert [s["uuid"] for s in first["suggestions"]] == [response.cards[0].suggestions[0].uuid]
    assert first["suggestions"][0]["actions"] == [{"type": "delete", "description": "Remove the draft",
                                                   "resourceId": "MedicationRequest/d1"}]
    assert f'- {TODO}: Swap the order (rituximab 1000 mg IV) (goes with "Remove the draft": do both or neither)' \
        in first["detail"]  # no description: the label, with the dose
    assert response.cards[0].suggestions[0].actions[1].resource["medicationCodeableConcept"]["coding"][0]["system"] \
        == RXNORM_URL, "the model is not changed"
    assert first["selectionBehavior"] == "any"
    assert first["detail"].index("\n- rituximab 1000 mg IV") < first["detail"].index("**Why:**")
    assert f"- {TODO}: Change to 10 mg" in first["detail"]
    assert "suggestions" not in second and "selectionBehavior" not in second
    assert second["detail"] == f"- finding\n\n- {TODO}: Change to 10 mg"


def test_two_creates_in_one_suggestion_keep_one_button_and_say_the_other_belongs_with_it():
    response = _synthetic()
    rx = response.cards[0].suggestions[0].actions[1]
    response.cards[0].suggestions[0].actions = [Action(type="create", description="Order A", resource=rx.resource),
                                                Action(type="create", description="Order B", resource=rx.resource)]
    response.cards[0].suggestions[0].isRecommended = True
    card = epic_json(response, EPIC_TOPICS)["cards"][0]
    assert [s["actions"][0]["description"] for s in card["suggestions"]] == ["Order A (rituximab 1000 mg IV)"]
    assert card["suggestions"][0]["isRecommended"] is True
    assert f'{TODO}: Order B (rituximab 1000 mg IV) (goes with "Order A (rituximab 1000 mg IV)"' in card["detail"]


def test_a_system_action_creating_a_dosed_order_without_a_description_is_rendered():
    rx = _synthetic().cards[0].suggestions[0].actions[1].resource
    response = CDSResponse(cards=[], systemActions=[Action(type="create", resource=rx)])
    action = epic_json(response, EPIC_TOPICS)["systemActions"][0]
    assert "description" not in action  # none made up: a system action is not shown to a clinician
    assert action["resource"]["medicationCodeableConcept"]["coding"][0]["system"] == RXNORM_OID
    described = CDSResponse(cards=[], systemActions=[Action(type="create", description="Order it", resource=rx)])
    assert epic_json(described, EPIC_TOPICS)["systemActions"][0]["description"] == "Order it (rituximab 1000 mg IV)"


@pytest.mark.parametrize("name", scenario_names())
def test_a_card_of_choose_one_suggestions_says_so_in_epic(name, clients):
    """Epic forces selectionBehavior "any": a card whose two or more suggestions are at-most-one
    must carry Card.alternatives, so that its Epic rendering says "choose one"."""
    _, service_id = _scenario(name)
    app = clients[SPEC].application
    service = app.extensions["mg_cds"]["services"][service_id]
    raw = (SCENARIOS / name / "request.json").read_bytes()
    hook_in, _ = hook_input(decode_body(raw, service.decoder), service, app.config)
    for card in service.evaluate(hook_in).cards:
        if card.selectionBehavior == "at-most-one" and len(card.suggestions) >= 2:
            assert card.alternatives, f"{card.rule_id}: at-most-one suggestions without Card.alternatives"


def test_the_doses_of_alternatives_name_their_suggestion_for_the_one_chosen(clients):
    request, service_id = _scenario("f11-pv-rituximab-consider-cites-cochrane-and-cohort")
    spec = _card(_post(clients[SPEC], service_id, request), "rituximab-consider")
    card = _card(_post(clients[EPIC], service_id, request), "rituximab-consider")
    note = card["detail"].split("**Doses to enter in the order, for the one you choose**", 1)[1].split("\n\n", 1)[0]
    doses = [line for line in note.splitlines() if line.startswith("- ")]
    labels = [s["label"] for s in spec["suggestions"]]
    assert len(doses) == len(labels) >= 2
    assert all(d.startswith(f'- For "{label}": ') for d, label in zip(doses, labels)), doses


def test_alternatives_whose_default_is_no_button_are_not_marked():
    response = _synthetic()
    card = response.cards[0]
    card.alternatives = "A or B"
    card.suggestions[1].choice = "preferred"  # the update: text in Epic
    card.suggestions[0].choice = "alternative"
    out = epic_json(response, EPIC_TOPICS)["cards"][0]
    assert not any("isRecommended" in s for s in out["suggestions"])
    assert "**Alternatives:**" not in out["detail"]
    card.suggestions[0].choice, card.suggestions[1].choice = "preferred", "alternative"
    out = epic_json(response, EPIC_TOPICS)["cards"][0]
    assert [s.get("isRecommended") for s in out["suggestions"]] == [True]  # the swap's one button
    assert "**Alternatives:** A or B" in out["detail"]


def test_a_service_without_a_table_still_sends_alphanumeric_topic_codes():
    out = epic_json(_synthetic(), None)
    assert [c["source"]["topic"]["code"] for c in out["cards"]] == ["ivigdosecheck", "ivigdosecheck"]


def test_a_dose_is_stated_only_as_a_whole_amount():
    assert states_dose("Order IVIG 28.8 g IV daily", amount_texts(28.8, "g"))
    assert states_dose("Order rituximab 1,000 mg", amount_texts(1000, "mg"))
    assert not states_dose("Order 10 g", amount_texts(0, "g"))
    assert not states_dose("Order 28.8 g", amount_texts(8.8, "g"))


def test_the_readme_names_every_host_a_card_links_to():
    """Epic shows allow-listed links only: the README lists the hosts the health system must allow."""
    from urllib.parse import urlsplit

    from hooks.knowledge import load
    readme = (SCENARIOS.parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Client profiles", 1)[1].split("\n### ", 1)[0]
    hosts = {urlsplit(c["url"]).netloc for c in load().citations.values() if c.get("url")}
    assert hosts and all(f"`{h}`" in section for h in hosts), sorted(h for h in hosts if f"`{h}`" not in section)
