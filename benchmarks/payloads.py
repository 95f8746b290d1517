"""Synthetic but realistic prefetch payloads for benchmarks: an MG patient
with N Observations (mostly vitals and routine labs that no rule reads, plus
the labs rules do read) and 200 MedicationRequests."""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
PID = "bench-pt"
ROUTINE = [("8867-4", "Heart rate", "/min", 60, 110), ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 160),
           ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 180),
           ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 132, 146),
           ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10, 16),
           ("29463-7", "Body weight", "kg", 70, 74), ("8302-2", "Body height", "cm", 174, 176)]
RELEVANT = [("2458-8", "IgA [Mass/volume] in Serum or Plasma", "mg/dL", 150, 300),
            ("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL", 0.0, 0.03)]
DRUGS = ["Lisinopril 10 MG Oral Tablet", "Metformin 500 MG Oral Tablet", "Atorvastatin 20 MG Oral Tablet",
         "Pyridostigmine bromide 60 MG Oral Tablet", "Prednisone 20 MG Oral Tablet", "Omeprazole 20 MG capsule"]


def observation(i: int, rng: random.Random) -> dict:
    code, display, unit, lo, hi = (RELEVANT if i % 50 == 0 else ROUTINE)[i % (2 if i % 50 == 0 else len(ROUTINE))]
    when = NOW - timedelta(hours=i * 3)
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": when.isoformat(),
            "issued": when.isoformat(),
            "valueQuantity": {"value": round(rng.uniform(lo, hi), 2), "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}}


def medication(i: int) -> dict:
    name = DRUGS[i % len(DRUGS)]
    return {"resourceType": "MedicationRequest", "id": f"rx-{i}", "status": "active" if i % 4 else "completed",
            "intent": "order", "medicationCodeableConcept": {"text": name},
            "subject": {"reference": f"Patient/{PID}"}, "authoredOn": (NOW - timedelta(days=i)).date().isoformat(),
            "dosageInstruction": [{"text": "1 tablet daily", "timing": {"repeat": {"frequency": 1, "period": 1,
                                                                                     "periodUnit": "d"}}}]}


def bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://fhir.example.org/{r['resourceType']}/{r['id']}", "resource": r}
                      for r in resources]}


def order_select_request(n_observations: int, n_medications: int = 200, seed: int = 7) -> dict:
    rng = random.Random(seed)
    conditions = [{"resourceType": "Condition", "id": "mg", "subject": {"reference": f"Patient/{PID}"},
                   "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                  "code": "active"}]},
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91637004",
                                        "display": "Myasthenia gravis (disorder)"}]}, "recordedDate": "2024-01-01"}]
    conditions += [{"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": f"Patient/{PID}"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003",
                                         "display": "Hypertension"}]}} for i in range(20)]
    draft = {"resourceType": "MedicationRequest", "id": "draft-ivig", "status": "draft", "intent": "order",
             "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "J06BA02"}],
                                           "text": "Immune globulin IV"},
             "subject": {"reference": f"Patient/{PID}"},
             "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d",
                                                          "boundsDuration": {"value": 5, "code": "d"}}},
                                    "doseAndRate": [{"doseQuantity": {"value": 40, "unit": "g", "code": "g",
                                                                      "system": "http://unitsofmeasure.org"}}]}]}
    return {"hook": "order-select", "hookInstance": "bench-0001",
            "context": {"userId": "Practitioner/1", "patientId": PID, "selections": ["MedicationRequest/draft-ivig"],
                        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}},
            "prefetch": {"patient": {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": "1970-01-01"},
                         "conditions": bundle(conditions),
                         "observations": bundle([observation(i, rng) for i in range(n_observations)]),
                         "medications": bundle([medication(i) for i in range(n_medications)]),
                         "administrations": None, "procedures": None, "serviceRequests": None}}


def body_bytes(n_observations: int) -> bytes:
    return json.dumps(order_select_request(n_observations)).encode()
