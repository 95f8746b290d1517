"""Alert-burden replay over generated bundles and Bulk Data NDJSON."""
from __future__ import annotations

import json

from cds_service.cli import main as cli
from fixtures.build_scenarios import IVIG, PID, admin, bundle, cc, condition, grade, iga, med, mg, patient, weight

from .conftest import NOW


def population(folder):
    """Three patients: no MG; MG grade 3 on azithromycin; MG with an IVIG order, an IVIG course 200 days
    ago and no IgA at any date (rules v2: info after an earlier course without a recorded reaction)."""
    def write(name, resources):
        text = json.dumps(bundle(resources, "collection")).replace(PID, name)
        (folder / f"{name}.json").write_text(text)
    write("no-mg", [patient(), weight(), med(cc(text="azithromycin 250 mg"), status="active")])
    write("grade3", [patient(), mg(), grade(3), weight(), med(cc(text="azithromycin 250 mg"), status="active")])
    write("ivig", [patient(), mg(), weight(), admin(IVIG, 200),
                   med(IVIG, status="active", dosageInstruction=[{"timing": {"repeat": {"frequency": 1, "period": 1,
                                                                                        "periodUnit": "d"}},
                                                                  "doseAndRate": [{"doseQuantity": {"value": 28.8,
                                                                                                    "unit": "g",
                                                                                                    "code": "g"}}]}])])


def report_rows(out, column: str = "per_1000_patients") -> dict[tuple[str, str, str], str]:
    lines = (out / "replay-report.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = {}
    for line in lines[1:]:
        values = dict(zip(header, line.split(",")))
        rows[(values["service"], values["rule"], values["indicator"])] = values[column]
    return rows


def test_patients_are_counted_per_row_not_per_rule(tmp_path):
    """One rule at two indicators (a macrolide at grade 3 is critical, without a grade a warning):
    each row counts the patients who got a card of that row."""
    src, out = tmp_path / "pop", tmp_path / "out"
    src.mkdir()
    for name, extra in (("grade3", [grade(3)]), ("ungraded", []), ("ungraded-2", [])):
        resources = [patient(), mg(), *extra, weight(), med(cc(text="azithromycin 250 mg"), status="active")]
        (src / f"{name}.json").write_text(json.dumps(bundle(resources, "collection")).replace(PID, name))
    assert cli(["replay", str(src), "--out", str(out), "--now", NOW, "--quiet"]) == 0
    patients = report_rows(out, "patients")
    assert patients[("mg-order-select", "mg-exacerbating-drug", "critical")] == "1"
    assert patients[("mg-order-select", "mg-exacerbating-drug", "warning")] == "2"
    md = (out / "replay-report.md").read_text()
    assert "| mg-order-select | mg-exacerbating-drug | critical | 1 | 333.3 | 1 |" in md


def test_replay_counts_cards_per_1000_patients(tmp_path, capsys):
    src, out = tmp_path / "pop", tmp_path / "out"
    src.mkdir()
    population(src)
    assert cli(["replay", str(src), "--out", str(out), "--now", NOW, "--quiet"]) == 0
    rows = report_rows(out)
    assert rows[("mg-order-select", "mg-exacerbating-drug", "critical")] == "333.3"  # 1 of 3 patients
    assert rows[("mg-patient-view", "mg-severe-management", "critical")] == "333.3"
    assert rows[("mg-order-select", "ivig-iga-unknown", "info")] == "333.3"
    assert not any(k[1] == "mg-exacerbating-drug" and k[2] == "warning" for k in rows)  # no-MG patient: quiet
    assert (out / "replay-report.md").read_text().startswith("# Alert-burden replay: 3 patients, 3 replayed orders")
    assert (out / "replay-report.png").stat().st_size > 1000
    assert "Slowest patients" in capsys.readouterr().out


def test_replay_reads_bulk_data_ndjson(tmp_path):
    src, out = tmp_path / "ndjson", tmp_path / "out"
    src.mkdir()
    people = [dict(patient(), id=f"p{i}") for i in range(4)]
    conditions = [dict(mg(), subject={"reference": "Patient/p1"}), dict(condition(cc(text="Myasthenic crisis"), days_ago=3),
                                                                         subject={"reference": "Patient/p1"})]
    (src / "Patient.ndjson").write_text("\n".join(json.dumps(p) for p in people) + "\n")
    (src / "Condition.ndjson").write_text("\n".join(json.dumps(c) for c in conditions) + "\n")
    assert cli(["replay", str(src), "--out", str(out), "--now", NOW, "--quiet"]) == 0
    rows = report_rows(out)
    assert rows[("mg-patient-view", "mg-severe-management", "critical")] == "250.0"  # 1 of 4 patients


def test_replay_fills_every_prefetch_key_so_no_data_is_reported_unavailable(tmp_path):
    """The chart goes under the keys the templates name; earlier all of it went under one key, and
    the absent 'observations' key made lab rules say the lab data could not be retrieved."""
    from cds_service import create_app
    from cds_service.replay import _request
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_LOG_LEVEL": "ERROR"})
    service = app.extensions["mg_cds"]["services"]["mg-patient-view"]
    body = _request(service, "p", [dict(patient(), id="p"), dict(iga(), subject={"reference": "Patient/p"})])
    assert set(body["prefetch"]) == set(service.prefetch)
    assert body["prefetch"]["patient"]["id"] == "p"
    assert [e["resource"]["resourceType"] for e in body["prefetch"]["observations"]["entry"]] == ["Observation"]
    assert body["prefetch"]["conditions"]["entry"] == []
