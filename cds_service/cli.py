"""The ``mg-cds`` command line: serve, evaluate, explain, services, rules,
demo, replay, feedback-report and db upgrade."""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

SERVICE_FOR_HOOK = {"order-select": "mg-order-select", "order-sign": "mg-order-sign", "patient-view": "mg-patient-view"}
DEMO = ("ivig-no-iga", "ivig-dose-too-high", "rituximab-no-screening", "macrolide-grade3", "pv-crisis-grade4")


def _now_for(path: Path, explicit: str | None) -> str:
    """--now, else CDS_NOW, else the 'now' of a scenario's expected.json beside the request."""
    if explicit:
        return explicit
    if os.environ.get("CDS_NOW"):
        return os.environ["CDS_NOW"]
    expected = path.parent / "expected.json"
    if expected.exists():
        return json.loads(expected.read_text()).get("now", "")
    return ""


def _offline_app(now: str):
    from . import create_app
    return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": now,
                       "CDS_LOG_LEVEL": "ERROR", "CDS_RECORD_CARDS": False})


def _evaluate(path: Path, service: str | None, now: str) -> tuple[int, dict[str, Any]]:
    body = json.loads(path.read_text(encoding="utf-8"))
    service = service or SERVICE_FOR_HOOK.get(body.get("hook", ""), "")
    client = _offline_app(now).test_client()
    resp = client.post(f"/cds-services/{service or 'unknown'}", json=body)
    return resp.status_code, resp.get_json()


def cmd_evaluate(args: argparse.Namespace) -> int:
    path = Path(args.request)
    status, body = _evaluate(path, args.service, _now_for(path, args.now))
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from .invocation import hook_input
    path = Path(args.request)
    body = json.loads(path.read_text(encoding="utf-8"))
    app = _offline_app(_now_for(path, args.now))
    service = app.extensions["mg_cds"]["services"].get(SERVICE_FOR_HOOK.get(body.get("hook", ""), ""))
    if service is None or service.explain is None:
        print(f"no service explains hook {body.get('hook')!r}", file=sys.stderr)
        return 1
    hook_in, _ = hook_input(body, service, app.config)
    print(json.dumps(service.explain(hook_in), indent=2))
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from hooks.services import SERVICES
    print(json.dumps({"services": [s.discovery() for s in SERVICES]}, indent=2))
    return 0


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}

    def line(r: dict[str, Any]) -> str:
        return "  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns)
    return "\n".join([line({c: c for c in columns}), line({c: "-" * widths[c] for c in columns})] + [line(r) for r in rows])


def cmd_rules(args: argparse.Namespace) -> int:
    from hooks.rules import catalogue
    print(_table(catalogue(), ["id", "hooks", "indicator", "display", "citations"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    root = Path(args.scenarios)
    for name in DEMO:
        path = root / name / "request.json"
        if not path.exists():
            continue
        description = json.loads((root / name / "expected.json").read_text())["description"]
        status, body = _evaluate(path, None, _now_for(path, None))
        print(f"\n== {name}: {description}")
        for card in body.get("cards", []):
            print(f"   [{card['indicator'].upper():8}] {card['summary']}  ({card['source']['topic']['code']})")
        if not body.get("cards"):
            print("   (no cards)")
    print(f"\nTry: {_command_path()} evaluate {root}/<scenario>/request.json   (list: ls {root})")
    return 0


def _command_path() -> str:
    """How to call mg-cds from the current directory: `mg-cds` when it is on PATH, else the script's
    path (``.venv/bin/mg-cds`` after ``make run``)."""
    script = Path(sys.executable).parent / "mg-cds"
    on_path = shutil.which("mg-cds")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "mg-cds"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def cmd_feedback_report(args: argparse.Namespace) -> int:
    from .feedback import FeedbackStore
    from .storage import sqlite_url
    from .storage_cli import default_url
    url = sqlite_url(args.db) if args.db else default_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        print(f"no feedback database at {url[len('sqlite:///'):]}", file=sys.stderr)
        return 1
    rows = FeedbackStore(url).report()
    columns = ["rule_id", "issued", "accepted", "overridden", "override_rate", "top_override_reasons"]
    print(_table(rows, columns))
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import load_population, replay, write_report
    population = load_population(Path(args.folder))
    if not population:
        print(f"no patients found in {args.folder}", file=sys.stderr)
        return 1
    app = _offline_app(args.now or os.environ.get("CDS_NOW", ""))
    ext = app.extensions["mg_cds"]
    report = replay(population, ext["services"].values(), app.config, progress=not args.quiet)
    for path in write_report(report, Path(args.out)):
        print(f"wrote {path}")
    print((Path(args.out) / "replay-report.md").read_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import create_app
    from .config import load_config
    config = load_config()
    workers = args.workers or int(config["CDS_WORKERS"])
    threads = args.threads or int(config["CDS_THREADS"])
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:  # e.g. Windows: Flask's server, for development only
        create_app().run(host=args.host, port=args.port, threaded=True)
        return 0

    class Server(BaseApplication):
        def load_config(self) -> None:
            from . import gunicorn_conf
            for name in ("worker_class", "accesslog", "graceful_timeout", "keepalive", "post_worker_init"):
                self.cfg.set(name, getattr(gunicorn_conf, name))
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 30)

        def load(self):
            return create_app()

    Server().run()
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .storage_cli import add_db_parser
    parser = argparse.ArgumentParser(prog="mg-cds", description="CDS Hooks service for myasthenia gravis")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the service (gunicorn)")
    p.add_argument("--host", default=os.environ.get("CDS_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("CDS_PORT", "8080")))
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_serve)
    for name, func, helptext in (("evaluate", cmd_evaluate, "print the CDS Hooks response for a request file"),
                                 ("explain", cmd_explain, "print the PatientState a request's data gives")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("request")
        p.add_argument("--now", help="ISO 8601 instant used as now (default: CDS_NOW, a scenario's expected.json, the clock)")
        if name == "evaluate":
            p.add_argument("--service", help="service id (default: from the request's hook)")
        p.set_defaults(func=func)
    sub.add_parser("services", help="print the discovery document").set_defaults(func=cmd_services)
    sub.add_parser("rules", help="print the rule catalogue").set_defaults(func=cmd_rules)
    p = sub.add_parser("demo", help="evaluate a few fixture scenarios and print their cards")
    p.add_argument("--scenarios", default="fixtures/scenarios")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("replay", help="alert burden: cards per 1,000 patients over a population of FHIR bundles")
    p.add_argument("folder", help="folder of FHIR R4 Bundles (*.json) or Bulk Data NDJSON (*.ndjson)")
    p.add_argument("--out", default="replay-report")
    p.add_argument("--now", help="ISO 8601 instant used as now (default: CDS_NOW or the clock)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("feedback-report", help="override rates per rule from the feedback database")
    p.add_argument("--db", help="database URL or SQLite path (default: CDS_DATABASE_URL, else CDS_FEEDBACK_DB)")
    p.add_argument("--csv", help="also write the table as CSV")
    p.set_defaults(func=cmd_feedback_report)
    add_db_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"mg-cds: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
