"""Alert-burden replay (``mg-cds replay DIR``): run the services over a
population of FHIR R4 patient Bundles (*.json) or Bulk Data NDJSON files
(*.ndjson) and report how many cards per rule and indicator would fire per
1,000 patients, with the slowest patients. patient-view runs once per patient;
order-select replays each active MedicationRequest as a draft order."""
from __future__ import annotations

import copy
import csv
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import CDSError
from .invocation import hook_input
from .service import ServiceDefinition


@dataclass
class ReplayReport:
    patients: int = 0
    order_selects: int = 0
    cards: Counter = field(default_factory=Counter)  # (service, rule, indicator) -> count
    patients_with_cards: Counter = field(default_factory=Counter)  # (service, rule, indicator) -> patients
    timings: list[tuple[float, str]] = field(default_factory=list)  # (ms, patient id)
    errors: list[str] = field(default_factory=list)

    def per_1000(self, count: int) -> float:
        return 1000.0 * count / self.patients if self.patients else 0.0


def _resources(path: Path) -> Iterator[dict]:
    if path.suffix == ".ndjson":
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("resourceType") == "Bundle":
        for entry in data.get("entry") or []:
            resource = entry.get("resource")
            if isinstance(resource, dict):
                if entry.get("fullUrl"):
                    resource = {**resource, "_fullUrl": entry["fullUrl"]}
                yield resource
    else:
        yield data


def load_population(folder: Path) -> dict[str, list[dict]]:
    """Patient id -> that patient's resources (Patient first), from every file in the folder."""
    resources = [r for p in sorted(folder.glob("*")) if p.suffix in (".json", ".ndjson") for r in _resources(p)]
    alias = {}
    for r in resources:
        if r.get("resourceType") == "Patient" and r.get("id"):
            alias[f"Patient/{r['id']}"] = r["id"]
            if r.get("_fullUrl"):
                alias[r["_fullUrl"]] = r["id"]
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for r in resources:
        r.pop("_fullUrl", None)
        if r.get("resourceType") == "Patient":
            by_patient[r["id"]].insert(0, r)
            continue
        ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
        pid = alias.get(ref) or alias.get("Patient/" + ref.rsplit("/", 1)[-1])
        if pid:
            r = {**r, "subject": {"reference": f"Patient/{pid}"}} if "subject" in r or "patient" not in r else \
                {**r, "patient": {"reference": f"Patient/{pid}"}}
            by_patient[pid].append(r)
    return {pid: rs for pid, rs in by_patient.items() if rs and rs[0].get("resourceType") == "Patient"}


def _prefetch(service: ServiceDefinition, resources: list[dict]) -> dict[str, Any]:
    """Each of the service's prefetch keys filled with the resources of the type its template
    reads (a key with none is null: no data), as an EHR would prefetch them."""
    out: dict[str, Any] = {}
    for key, template in service.prefetch.items():
        rtype = template.split("?", 1)[0].split("/", 1)[0]
        matching = [r for r in resources if r.get("resourceType") == rtype]
        if "?" not in template:  # a read: Patient/{{context.patientId}}
            out[key] = matching[0] if matching else None
        else:
            out[key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in matching]}
    return out


def _request(service: ServiceDefinition, pid: str, resources: list[dict], draft: dict | None = None) -> dict:
    context: dict[str, Any] = {"userId": "Practitioner/replay", "patientId": pid}
    if draft is not None:
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
        context["selections"] = [f"MedicationRequest/{draft['id']}"]
    return {"hook": service.hook, "hookInstance": f"replay-{pid}", "context": context,
            "prefetch": _prefetch(service, resources)}


def replay(population: dict[str, list[dict]], services: Iterable[ServiceDefinition], config: dict,
           progress: bool = True) -> ReplayReport:
    by_hook = {s.hook: s for s in services}
    report = ReplayReport()
    total = len(population)
    for n, (pid, resources) in enumerate(population.items(), 1):
        started = time.perf_counter()
        calls: list[tuple[str, dict | None]] = [("patient-view", None)]
        for r in resources:
            if r.get("resourceType") == "MedicationRequest" and r.get("status") == "active" and r.get("id"):
                calls.append(("order-select", {**copy.deepcopy(r), "status": "draft"}))
        fired: set[tuple[str, str, str]] = set()
        for hook, draft in calls:
            service = by_hook.get(hook)
            if service is None:
                continue
            try:
                hook_in, _ = hook_input(_request(service, pid, resources, draft), service, config)
                response = service.evaluate(hook_in)
            except CDSError as exc:
                report.errors.append(f"{pid} {hook}: {exc.message}")
                continue
            report.order_selects += hook == "order-select"
            for card in response.cards:
                report.cards[(service.id, card.rule_id or "", card.indicator)] += 1
                fired.add((service.id, card.rule_id or "", card.indicator))
        for key in fired:
            report.patients_with_cards[key] += 1
        report.timings.append(((time.perf_counter() - started) * 1000, pid))
        report.patients += 1
        if progress:
            done = int(30 * n / total)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {n}/{total} patients")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    return report


def write_report(report: ReplayReport, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(((s, r, i, c) for (s, r, i), c in report.cards.items()), key=lambda x: (-x[3], x[0], x[1]))
    lines = [f"# Alert-burden replay: {report.patients} patients, {report.order_selects} replayed orders", "",
             "| service | rule | indicator | cards | cards per 1,000 patients | patients with such a card |",
             "|---|---|---|---:|---:|---:|"]
    for service, rule, indicator, count in rows:
        lines.append(f"| {service} | {rule} | {indicator} | {count} | {report.per_1000(count):.1f} | "
                     f"{report.patients_with_cards[(service, rule, indicator)]} |")
    by_indicator: Counter[str] = Counter()
    for (_, _, indicator), count in report.cards.items():
        by_indicator[indicator] += count
    lines += ["", "| indicator | cards per 1,000 patients |", "|---|---:|"]
    lines += [f"| {i} | {report.per_1000(by_indicator[i]):.1f} |" for i in ("critical", "warning", "info")]
    lines += ["", "Slowest patients (all calls for the patient):", ""]
    lines += [f"- {pid}: {ms:.1f} ms" for ms, pid in sorted(report.timings, reverse=True)[:5]]
    if report.errors:
        lines += ["", f"{len(report.errors)} calls answered with an error:", ""] + [f"- {e}" for e in report.errors[:20]]
    md = out / "replay-report.md"
    md.write_text("\n".join(lines) + "\n")
    written = [md]
    with open(out / "replay-report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["service", "rule", "indicator", "cards", "per_1000_patients", "patients"])
        writer.writerows([(s, r, i, c, round(report.per_1000(c), 1), report.patients_with_cards[(s, r, i)])
                          for s, r, i, c in rows])
    written.append(out / "replay-report.csv")
    chart = _chart(report, rows, out / "replay-report.png")
    if chart:
        written.append(chart)
    return written


def _chart(report: ReplayReport, rows, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    per_rule: dict[str, Counter] = defaultdict(Counter)
    for _, rule, indicator, count in rows:
        per_rule[rule][indicator] += count
    rules = sorted(per_rule, key=lambda r: -sum(per_rule[r].values()))
    fig, ax = plt.subplots(figsize=(9, max(3, 0.4 * len(rules) + 1)))
    left = [0.0] * len(rules)
    for indicator, colour in (("critical", "#b00020"), ("warning", "#c77800"), ("info", "#0b5cad")):
        values = [report.per_1000(per_rule[r][indicator]) for r in rules]
        ax.barh(rules, values, left=left, color=colour, label=indicator)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("cards per 1,000 patients")
    ax.set_title(f"mg-cds alert burden ({report.patients} patients)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
