"""The value sets in hooks/knowledge/valuesets: every code carries its source, every file
parses through hooks.knowledge, codes are well formed and mean one thing everywhere, and the
ids other modules read exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hooks import builder
from hooks.knowledge import EXT, _parse_valueset, load

VS_DIR = Path(__file__).resolve().parent.parent / "hooks" / "knowledge" / "valuesets"
FILES = sorted(VS_DIR.glob("*.json"))
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
SOURCE = f"{EXT}source"
CONCEPT_EXTENSIONS = {SOURCE, f"{EXT}product", f"{EXT}iga-content", f"{EXT}iga-max-ug-per-ml"}

# ids agreed in the team brief for the new rules (A and B read them)
NEW_IDS = ["drug-telithromycin", "drug-quinine", "drug-botulinum-toxin", "drug-hydroxychloroquine",
           "drug-penicillamine", "drug-procainamide", "drug-polymyxin", "drug-neuromuscular-blocker",
           "drug-ivig-iga-depleted", "lab-creatinine", "lab-egfr", "lab-anti-iga"]


def raw(vid: str) -> dict:
    return json.loads((VS_DIR / f"{vid}.json").read_text(encoding="utf-8"))


def concepts(data: dict):
    for inc in data["compose"]["include"]:
        for concept in inc.get("concept", []):
            yield inc["system"], concept


def loinc_check_digit(number: str) -> str:
    """LOINC's mod-10 check digit (the Luhn scheme) of the part before the hyphen."""
    total = 0
    for position, char in enumerate(reversed(number), start=1):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit // 10 + digit % 10
    return str((10 - total % 10) % 10)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_code_and_class_records_where_it_came_from(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    for system, concept in concepts(data):
        ext = concept.get("extension", [])
        assert ext and ext[0]["url"] == SOURCE, (system, concept["code"])
        assert len(ext[0]["valueString"]) > 20, (system, concept["code"])
        assert {e["url"] for e in ext} <= CONCEPT_EXTENSIONS, concept["code"]
    for inc in data["compose"]["include"]:
        if inc.get("filter"):
            assert any(e["url"] == SOURCE and e["valueString"] for e in inc.get("extension", [])), inc


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_value_set_points_to_the_teams_reference_folder(path):
    text = path.read_text(encoding="utf-8")
    assert "shared/" not in text and "codes.csv" not in text and "/work/" not in text


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_file_parses_through_the_knowledge_loader(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["resourceType"] == "ValueSet" and data["id"] == path.stem
    vs = _parse_valueset(data)
    listed = [(system, c["code"]) for system, c in concepts(data)]
    assert len(listed) == len(set(listed)), "a code listed twice in one value set"
    assert set(vs.codes) == set(listed)
    # concept-level data (sources, IgA content) must never leak into the value set's options
    assert not any(name in vs.options for name in ("source", "product", "iga-content"))
    assert load().vs(path.stem) is not None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_codes_are_well_formed(path):
    for system, concept in concepts(json.loads(path.read_text(encoding="utf-8"))):
        code = concept["code"]
        if system == RXNORM:
            assert re.fullmatch(r"[1-9]\d{1,7}", code), code
        elif system == LOINC:
            number, check = code.split("-")
            assert number.isdigit() and loinc_check_digit(number) == check, code
        elif system == ATC:
            assert re.fullmatch(r"[A-Z]\d\d[A-Z]{0,2}(\d\d)?", code), code
        assert concept.get("display"), code


def test_a_code_means_the_same_thing_in_every_value_set():
    displays: dict[tuple[str, str], set[str]] = {}
    for path in FILES:
        for system, concept in concepts(json.loads(path.read_text(encoding="utf-8"))):
            displays.setdefault((system, concept["code"]), set()).add(concept["display"])
    conflicting = {key: names for key, names in displays.items() if len(names) > 1}
    assert not conflicting


def test_the_ids_other_modules_read_and_the_agreed_new_ids_exist():
    have = {p.stem for p in FILES}
    read = set(builder.LAB_SETS) | set(builder.DRUG_SETS) | set(builder.CONDITION_SETS) | set(builder.PROCEDURE_SETS)
    assert read <= have, read - have
    assert set(NEW_IDS) <= have, set(NEW_IDS) - have


def test_immune_globulin_products_are_classified_by_their_labelled_route_once():
    ivig, scig, generic = (set(load().vs(v).codes) for v in ("drug-ivig", "drug-scig", "drug-immune-globulin-generic"))
    assert not (ivig & scig) and not (ivig & generic) and not (scig & generic)
    names = {d for v in ("drug-ivig", "drug-scig") for d in load().vs(v).codes.values()}
    assert not any("[Gamunex]" in n or "[Gammaked]" in n or "MG/ML Injection [Gammagard]" in n for n in names)
    assert not any("[GamaSTAN]" in d for v in ("drug-ivig", "drug-scig", "drug-immune-globulin-generic")
                   for d in load().vs(v).codes.values())
    # every branded product cites where its labelled route comes from
    for vid in ("drug-ivig", "drug-scig", "drug-immune-globulin-generic"):
        for _, concept in concepts(raw(vid)):
            if concept["display"].endswith("]"):
                assert "route: " in concept["extension"][0]["valueString"], concept["code"]


def test_each_iga_depleted_product_carries_its_label_content_and_is_an_ivig():
    data = raw("drug-ivig-iga-depleted")
    ivig = load().vs("drug-ivig")
    listed = list(concepts(data))
    assert listed
    for system, concept in listed:
        ext = {e["url"][len(EXT):]: e["valueString"] for e in concept["extension"]}
        assert "IgA" in ext["iga-content"] and ext["product"]
        assert float(ext["iga-max-ug-per-ml"]) > 0
        assert "prescribing information" in ext["source"] and "dailymed" in ext["source"].lower()
        assert ivig.match_code(system, concept["code"])
    assert load().vs("drug-ivig-iga-depleted").match_text("Gammagard S/D 10 g IV")
    assert not load().vs("drug-ivig-iga-depleted").match_text("Gammagard Liquid 10%")


def test_magnesium_holds_injectable_products_only():
    # a code match skips the route check, so the ingredient (oral products too) must stay out
    vs = load().vs("drug-magnesium-iv")
    rx = {c: d for (s, c), d in vs.codes.items() if s == RXNORM}
    assert rx and "6585" not in rx
    assert all(re.search(r"Injection|Prefilled Syringe", d) for d in rx.values())


def test_systemic_class_sets_leave_out_topical_ophthalmic_and_otic_products():
    topical = re.compile(r"Ophthalmic|Otic|Topical|Cream|Ointment")
    for vid in ("drug-fluoroquinolone", "drug-aminoglycoside", "drug-macrolide", "drug-corticosteroid", "drug-polymyxin"):
        assert not [d for d in load().vs(vid).codes.values() if topical.search(d)], vid


def test_botulinum_toxins_exclude_antitoxins_and_botulism_immune_globulin():
    vs = load().vs("drug-botulinum-toxin")
    assert vs.match_text("onabotulinumtoxinA 100 UNT Injection [Botox]") and vs.match_text("Dysport 500 units")
    for name in ("Botulism antitoxin heptavalent (equine)", "botulism immune globulin IV human [BabyBIG]",
                 "botulinum neurotoxin A immune FAB2, equine"):
        assert not vs.match_text(name), name
    assert not [d for d in vs.codes.values() if "immune" in d.lower()]


def test_anti_iga_is_not_confused_with_iga_class_antibodies_or_serum_iga():
    anti, iga = load().vs("lab-anti-iga"), load().vs("lab-iga")
    assert anti.match_text("Anti-IgA antibody") and anti.match_text("Antibodies to IgA, serum")
    assert not anti.match_text("Tissue transglutaminase IgA antibody")
    assert not anti.match_text("IgA [Mass/volume] in Serum")
    assert not iga.match_text("Anti-IgA antibody")


def test_a_coded_creatinine_or_egfr_still_counts_as_chemistry():
    chemistry = set(load().vs("lab-chemistry").codes)
    assert set(load().vs("lab-creatinine").codes) <= chemistry
    assert set(load().vs("lab-egfr").codes) <= chemistry


def test_ordered_lab_codes_carry_their_loinc_long_names():
    # the first LOINC of a lab value set is the code put on a suggested ServiceRequest
    assert load().vs("lab-striational-ab").first_code(LOINC) == ("8097-8", "Striated muscle Ab [Titer] in Serum")
    assert load().vs("lab-anti-hbc").first_code(LOINC) == (
        "13952-7", "Hepatitis B virus core Ab [Presence] in Serum or Plasma by Immunoassay")
    assert load().vs("lab-creatinine").first_code(LOINC)[0] == "2160-0"
    for vid in (p.stem for p in FILES if p.stem.startswith("lab-")):
        first = load().vs(vid).first_code(LOINC)
        assert first is None or "not seen" not in first[1] and "catalog" not in first[1], vid


def test_igm_anti_hbc_is_not_a_screening_anti_hbc():
    vs = load().vs("lab-anti-hbc")
    assert vs.match_text("Hepatitis B core antibody, total")
    assert not vs.match_text("Hepatitis B core antibody IgM")
    assert vs.match_text("Hep B Core Ab IgG/IgM") and vs.match_text("Hepatitis B core antibody, total (IgG and IgM)")
    assert ("http://loinc.org", "16933-4") in vs.codes
