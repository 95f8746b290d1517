"""The card preview page (CDS_PREVIEW=true): pick a fixture scenario or paste
a request, send it to a service, and see the cards as an EHR shows them next
to what the service read from the data. For development and review only: it
calls the services the way an EHR does and needs CDS_AUTH_MODE=off."""
from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, current_app, jsonify, send_from_directory

from . import repeats
from .errors import NotFound
from .invocation import hook_input

bp = Blueprint("preview", __name__)
STATIC = Path(__file__).parent / "static"


def _scenarios_dir() -> Path:
    return Path(current_app.config["CDS_FIXTURES_DIR"])


@bp.get("/preview")
def page():
    return send_from_directory(STATIC, "preview.html")


@bp.get("/favicon.ico")
def favicon():
    return send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml")


@bp.get("/preview/<path:name>.<ext>")
def asset(name: str, ext: str):
    if ext not in ("css", "js"):
        raise NotFound("no such asset")
    return send_from_directory(STATIC, f"{name}.{ext}")


@bp.get("/preview-api/scenarios")
def scenarios():
    out = []
    root = _scenarios_dir()
    for folder in sorted(p for p in root.glob("*") if (p / "request.json").exists()) if root.is_dir() else []:
        expected = json.loads((folder / "expected.json").read_text()) if (folder / "expected.json").exists() else {}
        out.append({"name": folder.name, "description": expected.get("description", ""),
                    "service": expected.get("service", "")})
    return jsonify(out)


@bp.get("/preview-api/scenarios/<name>")
def scenario(name: str):
    path = _scenarios_dir() / name / "request.json"
    if "/" in name or ".." in name or not path.exists():
        raise NotFound(f"no scenario '{name}'")
    return current_app.response_class(path.read_bytes(), mimetype="application/json")


@bp.post("/preview-api/explain/<service_id>")
def explain(service_id: str):
    from .app import _read_json
    service = current_app.extensions["mg_cds"]["services"].get(service_id)
    if service is None or service.explain is None:
        raise NotFound(f"no service '{service_id}' that explains its data")
    hook_in, _ = hook_input(_read_json(service), service, current_app.config)
    out = service.explain(hook_in)
    if service.hook == repeats.HOOK:
        # Why each card is shown or left out at signing. It logs no card and counts nothing, but its lookup
        # first writes this replica's queued issued-card rows of the patient (as the order-sign call does).
        # It has no JWT (the preview is meant for CDS_AUTH_MODE=off), so its issuer is "": with authentication
        # on it would not find the rows of an EHR's calls.
        from .app import select_services
        out["repeats"] = repeats.check(current_app.extensions["mg_cds"]["feedback"], service.hook, hook_in.request,
                                       service.evaluate(hook_in).cards, select_services(),
                                       current_app.config, issuer="").to_json()
    return jsonify(out)
